"""Issue 20, item 10: a sparse 1 TiB block file with a valid header.  `load_block` without `out` raised MemoryError
(documented never to raise) and `kvfs verify` read it for ~25 min per TiB and called it sound.  A header's
payload length is bounded (MAX_PAYLOAD_LEN): such a file is a counted bad_header miss, found in milliseconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from faultlib import Store, env

from kvfs.blockfile import MAX_PAYLOAD_LEN, BlockIdentity, MissReason, encode_header, load_block

TIB = 1 << 40


def _sparse_block(store: Store, n: int, length: int) -> tuple[Path, BlockIdentity]:
    path = store.block(n, size=100)
    ident = BlockIdentity(store.fingerprint, b"key-%d" % n)
    with open(path, "r+b") as fh:
        fh.write(encode_header(ident, length, 0))
        fh.truncate(4096 + length)
    return path, ident


def test_sparse_tib_block_is_a_miss_not_a_memory_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    path, ident = _sparse_block(store, 1, TIB)
    started = time.monotonic()
    result = load_block(path, ident)  # no `out`: the old code allocated the payload
    assert not result.ok and result.reason is MissReason.BAD_HEADER
    assert time.monotonic() - started < 5


def test_verify_calls_a_sparse_tib_block_corrupt_quickly(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    good = store.block(2, size=100)
    path, _ = _sparse_block(store, 1, TIB)
    argv = [
        sys.executable,
        "-m",
        "kvfs.cli",
        "--root",
        str(store.root),
        "--catalog",
        f"sqlite:///{tmp_path / 'c.db'}",
    ]
    proc = subprocess.run([*argv, "verify", "--json"], capture_output=True, text=True, env=env(), timeout=60)
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and out["checked"] == 2
    assert [(c["path"].rsplit("/", 1)[1], c["reason"]) for c in out["corrupt"]] == [(path.name, "bad_header")]
    assert out["checked_bytes"] < 1 << 20  # allocated bytes, not the sparse length
    assert good.exists()


def test_a_block_at_the_cap_is_still_accepted_by_the_header_check() -> None:
    from kvfs.blockfile import parse_header

    ident = BlockIdentity(b"\0" * 32, b"k")
    assert not isinstance(parse_header(encode_header(ident, MAX_PAYLOAD_LEN, 0)), MissReason)
    assert parse_header(encode_header(ident, MAX_PAYLOAD_LEN + 1, 0)) is MissReason.BAD_HEADER
