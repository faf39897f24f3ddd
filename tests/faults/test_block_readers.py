"""Issue 13, failure 1: a FIFO (or other non-regular file) at a block path must be a miss, never a hang.

Opening a FIFO for reading without O_NONBLOCK waits for a writer forever: one such file would freeze a connector
I/O thread (load_block) or `kvfs verify` (check_block_file, read_header).  Each reader runs in a thread here; a
reader still blocked after the deadline fails the test, and the FIFO is then opened for writing to release it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvfs.blockfile import BlockIdentity, MissReason, check_block_file, load_block, read_header

IDENT = BlockIdentity(hashlib.sha256(b"ns").digest(), b"k" * 36)
DEADLINE_S = 5.0


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "ns_0123456789ab_r0" / "abc" / "de_g0" / "ab.kvfs"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    return path


def _run_bounded(fn: Callable[[], object], fifo: Path) -> object:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        # Release the blocked open (a writer appears, then goes away) so the thread ends.
        fd = os.open(fifo, os.O_WRONLY)
        os.close(fd)
        thread.join(DEADLINE_S)
        pytest.fail(f"reader blocked on a FIFO for more than {DEADLINE_S}s")
    return out[0]


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(lambda p: load_block(p, IDENT).reason, id="load_block"),
        pytest.param(lambda p: load_block(p, IDENT, bytearray(8192)).reason, id="load_block_out"),
        pytest.param(lambda p: load_block(p, IDENT, direct=True).reason, id="load_block_direct"),
        pytest.param(check_block_file, id="check_block_file"),
        pytest.param(read_header, id="read_header"),
    ],
)
def test_fifo_at_block_path_is_a_not_regular_miss(tmp_path: Path, reader: Callable[[Path], object]) -> None:
    fifo = _fifo(tmp_path)
    assert _run_bounded(lambda: reader(fifo), fifo) == MissReason.NOT_REGULAR


def test_fifo_load_is_a_not_regular_miss(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    result = _run_bounded(lambda: load_block(fifo, IDENT), fifo)
    assert not result.ok and result.reason is MissReason.NOT_REGULAR  # type: ignore[attr-defined]


def test_directory_at_block_path_is_not_regular(tmp_path: Path) -> None:
    path = tmp_path / "x.kvfs"
    path.mkdir()
    assert load_block(path, IDENT).reason is MissReason.NOT_REGULAR
    assert check_block_file(path) is MissReason.NOT_REGULAR
