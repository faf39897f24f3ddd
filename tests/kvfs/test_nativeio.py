"""The compiled block-file path (kvfs._blockio through kvfs.nativeio): built by the project's own install, the
same files as the Python path byte for byte, the same misses for bad files, and real races and failures."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kvfs import blockfile, checksum, metrics, nativeio
from kvfs.blockfile import (
    HEADER_SIZE,
    BlockIdentity,
    Durability,
    MissReason,
    StoreOutcome,
    load_block,
    settle_load,
    store_block,
)
from kvfs.checksum import CHECKSUM_ALGO_ID, HASH_PIECE_BYTES, payload_checksum

IDENT = BlockIdentity(hashlib.sha256(b"native").digest(), b"key-native")
OTHER = BlockIdentity(hashlib.sha256(b"native").digest(), b"key-other")
SIZES = [
    0,
    1,
    4095,
    4096,
    HASH_PIECE_BYTES - 1,
    HASH_PIECE_BYTES,
    HASH_PIECE_BYTES + 1,
    3 * HASH_PIECE_BYTES + 17,
]

pytestmark = pytest.mark.skipif(
    nativeio.MODULE is None and os.environ.get("KVFS_NATIVE_IO") == "0", reason="KVFS_NATIVE_IO=0 in this run"
)


@pytest.fixture
def native() -> Any:
    assert nativeio.MODULE is not None, f"the compiled block-file path is {nativeio.STATUS}"
    return nativeio.MODULE


def payload_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed) % 251 for i in range(min(n, 65536))) * (n // 65536 + 1)


def test_the_install_builds_it_and_its_hash_agrees() -> None:
    # `make setup` (pip install -e) compiles kvfs/_blockio.c; checksum.py's self-test ran at import.
    assert nativeio.MODULE is not None, nativeio.STATUS
    assert nativeio.STATUS == "on"
    assert REGISTRY.get_sample_value("kvfs_block_io_native") == 1


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("known", [False, True])
def test_its_files_are_the_python_paths_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: object, n: int, known: bool
) -> None:
    data = payload_of(n)[:n]
    given = payload_checksum(data) if known else None
    assert store_block(tmp_path / "c" / "a.kvfs", data, IDENT, checksum=given).outcome is StoreOutcome.STORED
    with monkeypatch.context() as m:
        m.setattr(nativeio, "MODULE", None)
        assert (
            store_block(tmp_path / "p" / "a.kvfs", data, IDENT, checksum=given).outcome is StoreOutcome.STORED
        )
        out = bytearray(max(n, 1))
        from_python = load_block(
            tmp_path / "c" / "a.kvfs", IDENT, out
        )  # the compiled path's file, read by Python
        assert from_python.ok and from_python.verified and bytes(out[:n]) == data
    assert (tmp_path / "c" / "a.kvfs").read_bytes() == (tmp_path / "p" / "a.kvfs").read_bytes()
    out = bytearray(n + 4096)
    result = load_block(tmp_path / "p" / "a.kvfs", IDENT, out)  # the Python path's file, read compiled
    assert (result.ok, result.verified, result.nbytes) == (True, True, n)
    assert bytes(out[:n]) == data


def test_unverified_loads_are_settled_by_the_caller(tmp_path: Path, native: object) -> None:
    data = payload_of(2 * HASH_PIECE_BYTES + 5)[: 2 * HASH_PIECE_BYTES + 5]
    path = tmp_path / "a.kvfs"
    store_block(path, data, IDENT)
    out = bytearray(len(data))
    result = load_block(path, IDENT, out, verify=False)
    assert result.ok and not result.verified and bytes(out) == data
    assert settle_load(result, payload_checksum(out)).verified
    assert settle_load(result, payload_checksum(out) ^ 1).reason is MissReason.CHECKSUM_MISMATCH


def _stored(tmp_path: Path, n: int = 3 * HASH_PIECE_BYTES + 9) -> tuple[Path, bytes]:
    data = payload_of(n)[:n]
    path = tmp_path / "blk.kvfs"
    assert store_block(path, data, IDENT).outcome is StoreOutcome.STORED
    return path, data


def test_a_flipped_payload_byte_in_any_piece_is_a_checksum_miss(tmp_path: Path, native: object) -> None:
    path, data = _stored(tmp_path)
    for offset in (0, HASH_PIECE_BYTES - 1, 2 * HASH_PIECE_BYTES + 3, len(data) - 1):
        raw = bytearray(path.read_bytes())
        raw[HEADER_SIZE + offset] ^= 0x40
        bad = tmp_path / f"bad{offset}.kvfs"
        bad.write_bytes(raw)
        assert load_block(bad, IDENT, bytearray(len(data))).reason is MissReason.CHECKSUM_MISMATCH


def test_torn_foreign_oversized_and_odd_files_are_misses(tmp_path: Path, native: object) -> None:
    path, data = _stored(tmp_path)
    raw = path.read_bytes()
    out = bytearray(len(data))
    torn = tmp_path / "torn.kvfs"
    torn.write_bytes(raw[: len(raw) - 10])
    assert load_block(torn, IDENT, out).reason is MissReason.TRUNCATED
    header_only = tmp_path / "half.kvfs"
    header_only.write_bytes(raw[:100])
    assert load_block(header_only, IDENT, out).reason is MissReason.TRUNCATED
    assert load_block(path, OTHER, out).reason is MissReason.KEY_MISMATCH
    assert (
        load_block(path, IDENT, bytearray(len(data) - 1)).reason is MissReason.BAD_HEADER
    )  # larger than out
    longer = tmp_path / "longer.kvfs"
    longer.write_bytes(raw + b"x")
    assert load_block(longer, IDENT, bytearray(len(data) + 10)).reason is MissReason.BAD_HEADER
    assert load_block(tmp_path / "none.kvfs", IDENT, out).reason is MissReason.MISSING
    assert load_block(tmp_path / "blk.kvfs" / "x", IDENT, out).reason is MissReason.MISSING  # ENOTDIR
    os.mkfifo(tmp_path / "fifo.kvfs")  # opened non-blocking and refused, never waited on
    assert load_block(tmp_path / "fifo.kvfs", IDENT, out).reason is MissReason.NOT_REGULAR
    (tmp_path / "dir.kvfs").mkdir()
    assert load_block(tmp_path / "dir.kvfs", IDENT, out).reason is MissReason.NOT_REGULAR


def test_files_of_the_first_checksum_algorithm_still_load(tmp_path: Path, native: object) -> None:
    data = payload_of(HASH_PIECE_BYTES + 3)[: HASH_PIECE_BYTES + 3]
    path = tmp_path / "old.kvfs"
    header = blockfile.encode_header(
        IDENT, len(data), payload_checksum(data, CHECKSUM_ALGO_ID), CHECKSUM_ALGO_ID
    )
    path.write_bytes(header + data)
    out = bytearray(len(data))
    assert load_block(path, IDENT, out).verified and bytes(out) == data


def test_stores_create_missing_directories_with_the_exact_mode(tmp_path: Path, native: object) -> None:
    old = os.umask(0o077)
    try:
        path = tmp_path / "a" / "b" / "c.kvfs"
        assert store_block(path, b"abc", IDENT, file_mode=0o660).outcome is StoreOutcome.STORED
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o660
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == blockfile.dir_mode_for(0o660)
    assert store_block(path, b"xyz", IDENT).outcome is StoreOutcome.EXISTS  # never replaced
    assert load_block(path, IDENT).payload == b"abc"


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "stat+rename"])
def test_racing_writers_of_one_block_publish_one_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: object, noreplace: bool
) -> None:
    """With RENAME_NOREPLACE exactly one writer publishes and the others answer EXISTS; with stat + rename (a
    filesystem refusing the flag) two writers that both pass the check may both rename, the later replacing the
    earlier: each answers STORED, and the block is still one whole file (rename is atomic)."""
    if not noreplace:
        monkeypatch.setattr(blockfile, "_renameat2", None)
    payloads = [payload_of(HASH_PIECE_BYTES + 100, seed)[: HASH_PIECE_BYTES + 100] for seed in range(8)]
    for round_ in range(5):
        path = tmp_path / f"r{round_}" / "blk.kvfs"
        start = threading.Barrier(len(payloads))
        outcomes: list[StoreOutcome] = []

        def write(
            data: bytes, path: Path = path, start: threading.Barrier = start, outcomes: list = outcomes
        ) -> None:
            start.wait()
            outcomes.append(store_block(path, data, IDENT).outcome)

        threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = outcomes.count(StoreOutcome.STORED)
        assert stored == 1 if noreplace else stored >= 1, outcomes
        assert outcomes.count(StoreOutcome.EXISTS) == len(payloads) - stored
        assert os.listdir(path.parent) == ["blk.kvfs"]  # every loser's temp file removed
        loaded = load_block(path, IDENT)
        assert loaded.ok and loaded.payload in payloads


def test_a_path_through_a_file_is_a_failed_store_without_leftovers(tmp_path: Path, native: object) -> None:
    (tmp_path / "plain").write_bytes(b"not a directory")
    result = store_block(tmp_path / "plain" / "blk.kvfs", b"data", IDENT)
    assert result.outcome is StoreOutcome.FAILED and "Not a directory" in (result.error or "")
    assert os.listdir(tmp_path) == ["plain"]


def test_a_write_failing_midway_is_a_failed_store_and_its_temp_file_is_removed(tmp_path: Path) -> None:
    # A real short write: the process may write files of at most 1 MiB (RLIMIT_FSIZE; SIGXFSZ ignored, so the
    # write fails with EFBIG), and the payload is 3 MiB.  In a child, so the limit binds no one else.
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from kvfs import nativeio
        from kvfs.blockfile import BlockIdentity, store_block, StoreOutcome
        assert nativeio.MODULE is not None, nativeio.STATUS
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        r = store_block({str(tmp_path / "d" / "blk.kvfs")!r}, b"x" * (3 << 20), BlockIdentity(bytes(32), b"k"))
        print(r.outcome.value, r.error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed") and "File too large" in done.stdout
    assert os.listdir(tmp_path / "d") == []  # no block, no temp file


@pytest.mark.parametrize("durability", list(Durability))
def test_every_durability_publishes(tmp_path: Path, native: object, durability: Durability) -> None:
    path = tmp_path / "d" / "blk.kvfs"
    assert store_block(path, b"q" * 70000, IDENT, durability=durability).outcome is StoreOutcome.STORED
    assert load_block(path, IDENT).payload == b"q" * 70000


def test_a_temp_file_left_by_a_refused_noreplace_is_published_the_portable_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: Any
) -> None:
    """Where the filesystem refuses RENAME_NOREPLACE (NFS: EINVAL), the compiled store hands its written, closed
    temp file back; `_publish` meets the same refusal, switches the process to stat + rename and publishes it, or
    answers EXISTS (the temp file removed) when another writer got there first.  No local filesystem refuses the
    flag, so the kernel's answer is played: the real compiled store writes the temp file (published under the temp
    name itself) and answers as a refusing filesystem would, and the ctypes rename refuses."""
    refused: list[bytes] = []

    def refusing(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
        refused.append(new)
        ctypes.set_errno(errno.EINVAL)
        return -1

    def store_then_refuse(tmp: bytes, final: bytes, *args: Any) -> tuple[int, int, int]:
        *rest, _noreplace, direct = args
        outcome, err, fallback = native.store(tmp + b".w", tmp, *rest, False, direct)  # leaves `tmp` written
        assert outcome == nativeio.STORED, err
        return nativeio.NOREPLACE_REFUSED, errno.EINVAL, fallback

    class Refusing:
        store = staticmethod(store_then_refuse)
        load = native.load
        pieces_checksum = native.pieces_checksum

    monkeypatch.setattr(nativeio, "MODULE", Refusing())
    monkeypatch.setattr(blockfile, "_renameat2", refusing)
    path = tmp_path / "d" / "a.kvfs"
    assert store_block(path, b"mine" * 1000, IDENT).outcome is StoreOutcome.STORED
    assert load_block(path, IDENT, bytearray(4000)).verified and blockfile._renameat2 is None
    assert len(refused) == 1 and os.listdir(path.parent) == ["a.kvfs"]
    rival = tmp_path / "d" / "b.kvfs"
    rival.write_bytes(b"the rival's file")
    assert store_block(rival, b"late" * 1000, IDENT).outcome is StoreOutcome.EXISTS  # stat + rename: EXISTS
    assert rival.read_bytes() == b"the rival's file" and sorted(os.listdir(path.parent)) == [
        "a.kvfs",
        "b.kvfs",
    ]


def test_a_hash_that_disagrees_turns_the_compiled_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    class WrongHash:
        @staticmethod
        def pieces_checksum(buf: object, piece: int) -> int:
            return 0

    real = nativeio.MODULE
    monkeypatch.setattr(nativeio, "MODULE", WrongHash())
    monkeypatch.setattr(nativeio, "STATUS", "on")
    try:
        checksum._check_native()
        assert nativeio.MODULE is None and "differs" in nativeio.STATUS
        assert REGISTRY.get_sample_value("kvfs_block_io_native") == 0
    finally:
        metrics.BLOCK_IO_NATIVE.set(1 if real is not None else 0)


def test_the_environment_turns_it_off() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from kvfs import nativeio; print(nativeio.STATUS)"],
        capture_output=True,
        text=True,
        env={**os.environ, "KVFS_NATIVE_IO": "0"},
        timeout=60,
    )
    assert done.stdout.strip() == "off (KVFS_NATIVE_IO=0)", done.stderr
