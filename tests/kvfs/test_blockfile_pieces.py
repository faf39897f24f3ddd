"""Block payloads are hashed and moved piece by piece: sizes around the I/O piece size and the checksum's
1 MiB hash pieces, unaligned tails, a flipped bit or a short file in a later piece; the bytes on disk never
depend on the I/O piece size.  Files of the older whole-payload checksum still load; deferred verification
(`verify=False` + `settle_load`) and precomputed checksums never let an unchecked payload through."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kvfs import blockfile
from kvfs.blockfile import (
    ALIGNMENT,
    HEADER_SIZE,
    BlockIdentity,
    MissReason,
    StoreOutcome,
    aligned_buffer,
    check_block_file,
    load_block,
    read_header,
    store_block,
)
from kvfs.checksum import (
    CHECKSUM_ALGO_ID,
    HASH_PIECE_BYTES,
    PIECES_ALGO_ID,
    checksum64,
    payload_checksum,
)

IDENT = BlockIdentity(hashlib.sha256(b"pieces").digest(), b"key-1")
PIECE = 2 * ALIGNMENT  # small pieces keep the files small while crossing many boundaries
SIZES = [
    0,
    1,
    PIECE - 1,
    PIECE,
    PIECE + 1,
    PIECE + ALIGNMENT,
    2 * PIECE - 1,
    3 * PIECE,
    3 * PIECE + 17,
    5 * PIECE + ALIGNMENT - 1,
]


@pytest.fixture(autouse=True)
def _both_paths(block_io: str) -> str:
    """Every test here on the compiled block-file path and on the Python one."""
    return block_io


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blockfile, "PIECE_BYTES", PIECE)


def payload_of(n: int) -> memoryview:
    buf = aligned_buffer(n)
    buf[:n] = os.urandom(n)
    return memoryview(buf)[:n]


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_across_piece_boundaries(tmp_path: Path, n: int, direct: bool) -> None:
    direct = direct and blockfile.probe_o_direct(tmp_path)
    payload = payload_of(n)
    path = tmp_path / "d" / "b.kvfs"
    assert store_block(path, payload, IDENT, direct=direct).outcome is StoreOutcome.STORED
    assert path.stat().st_size == HEADER_SIZE + n
    header = read_header(path)
    assert not isinstance(header, MissReason)
    assert header.checksum_algo == PIECES_ALGO_ID
    assert header.payload_checksum == payload_checksum(bytes(payload))
    assert path.read_bytes()[HEADER_SIZE:] == bytes(payload)
    for out_len in (n, n + 1, n + PIECE + ALIGNMENT):  # exact, unaligned tail room, room to spare
        out = aligned_buffer(out_len)
        got = load_block(path, IDENT, memoryview(out)[:out_len], direct=direct)
        assert (got.ok, got.nbytes) == (True, n)
        assert out[:n] == bytes(payload)
    assert load_block(path, IDENT, direct=direct).payload == bytes(payload)
    assert check_block_file(path) is None


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("where", [0, PIECE - 1, PIECE, 2 * PIECE + 5, 3 * PIECE + 16])
def test_bit_flip_in_any_piece_is_a_checksum_miss(tmp_path: Path, where: int, direct: bool) -> None:
    n = 3 * PIECE + 17
    path = tmp_path / "b.kvfs"
    store_block(path, payload_of(n), IDENT)
    with open(path, "r+b") as fh:
        fh.seek(HEADER_SIZE + where)
        byte = fh.read(1)[0]
        fh.seek(HEADER_SIZE + where)
        fh.write(bytes([byte ^ 0x10]))
    out = aligned_buffer(n)
    got = load_block(path, IDENT, out, direct=direct and blockfile.probe_o_direct(tmp_path))
    assert (got.ok, got.reason) == (False, MissReason.CHECKSUM_MISMATCH)


def test_file_shrinking_after_the_header_is_a_truncated_miss(tmp_path: Path) -> None:
    """A file cut short while a load is between pieces (an evictor, a torn copy) is a miss, never garbage."""
    n = 4 * PIECE
    path = tmp_path / "b.kvfs"
    payload = payload_of(n)
    store_block(path, payload, IDENT)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, HEADER_SIZE + 2 * PIECE + 3)  # after fstat would have seen the full size
        out = memoryview(aligned_buffer(n))
        assert blockfile._read_hashed(fd, out, n, 0, PIECES_ALGO_ID) == -1
        want = payload_checksum(bytes(payload[: 2 * PIECE]))
        assert blockfile._read_hashed(fd, out, 2 * PIECE, 0, PIECES_ALGO_ID) == want
    finally:
        os.close(fd)


@pytest.mark.parametrize("piece", [ALIGNMENT, 3 * ALIGNMENT, 10**6, 1 << 30])
def test_any_piece_size_writes_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """Unaligned or huge settings round to whole pages; the bytes on disk never depend on the piece size."""
    monkeypatch.setattr(blockfile, "PIECE_BYTES", piece)
    payload = payload_of(7 * ALIGNMENT + 123)
    ref, other = tmp_path / "ref.kvfs", tmp_path / "other.kvfs"
    store_block(other, payload, IDENT)
    monkeypatch.setattr(blockfile, "PIECE_BYTES", PIECE)
    store_block(ref, payload, IDENT)
    assert ref.read_bytes() == other.read_bytes()


@pytest.mark.parametrize(
    "n", [HASH_PIECE_BYTES - 1, HASH_PIECE_BYTES, HASH_PIECE_BYTES + 1, 3 * HASH_PIECE_BYTES + 5]
)
def test_hash_piece_boundaries(tmp_path: Path, n: int) -> None:
    payload = payload_of(n)
    path = tmp_path / "b.kvfs"
    store_block(path, payload, IDENT)
    header = read_header(path)
    assert not isinstance(header, MissReason) and header.payload_checksum == payload_checksum(bytes(payload))
    out = aligned_buffer(n)
    assert load_block(path, IDENT, out).ok and out[:n] == bytes(payload)
    with open(path, "r+b") as fh:  # a flip in the last hash piece
        fh.seek(HEADER_SIZE + n - 1)
        last = fh.read(1)[0]
        fh.seek(HEADER_SIZE + n - 1)
        fh.write(bytes([last ^ 1]))
    assert load_block(path, IDENT, out).reason is MissReason.CHECKSUM_MISMATCH
    assert check_block_file(path) is MissReason.CHECKSUM_MISMATCH


@pytest.mark.parametrize("direct", [False, True])
def test_files_with_the_whole_payload_checksum_still_load(tmp_path: Path, direct: bool) -> None:
    """Algorithm 1 (xxh3-64 of the whole payload) was written before piece checksums: still read and checked."""
    direct = direct and blockfile.probe_o_direct(tmp_path)
    n = 3 * PIECE + 17
    payload = bytes(payload_of(n))
    path = tmp_path / "old.kvfs"
    path.write_bytes(blockfile.encode_header(IDENT, n, checksum64(payload), algo=CHECKSUM_ALGO_ID) + payload)
    out = aligned_buffer(n)
    got = load_block(path, IDENT, out, direct=direct)
    assert got.ok and got.header is not None and got.header.checksum_algo == CHECKSUM_ALGO_ID
    assert out[:n] == payload and check_block_file(path) is None
    path.write_bytes(
        blockfile.encode_header(IDENT, n, checksum64(payload) ^ 1, algo=CHECKSUM_ALGO_ID) + payload
    )
    assert load_block(path, IDENT, out, direct=direct).reason is MissReason.CHECKSUM_MISMATCH
    assert check_block_file(path) is MissReason.CHECKSUM_MISMATCH


def test_unknown_checksum_algorithm_is_a_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "future.kvfs"
    path.write_bytes(blockfile.encode_header(IDENT, 3, 0, algo=9) + b"abc")
    assert load_block(path, IDENT).reason is MissReason.BAD_HEADER


@pytest.mark.parametrize("direct", [False, True])
def test_deferred_verification(tmp_path: Path, direct: bool) -> None:
    """verify=False hands the checksum to the caller; only settle_load with the right value makes it a hit."""
    direct = direct and blockfile.probe_o_direct(tmp_path)
    n = 5 * PIECE + 3
    payload = payload_of(n)
    path = tmp_path / "b.kvfs"
    store_block(path, payload, IDENT)
    out = aligned_buffer(n)
    got = load_block(path, IDENT, out, direct=direct, verify=False)
    assert (got.ok, got.verified, got.nbytes) == (True, False, n)
    assert out[:n] == bytes(payload)
    good = blockfile.settle_load(got, payload_checksum(out[:n]))
    assert (good.ok, good.verified) == (True, True)
    bad = blockfile.settle_load(got, payload_checksum(out[:n]) ^ 1)
    assert (bad.ok, bad.reason) == (False, MissReason.CHECKSUM_MISMATCH)
    with pytest.raises(ValueError):
        blockfile.settle_load(good, 0)
    with pytest.raises(ValueError):
        load_block(path, IDENT, verify=False)
    # a miss found before the payload (wrong identity) is a miss whatever `verify` says
    other = BlockIdentity(IDENT.fingerprint, b"key-2")
    assert load_block(path, other, out, verify=False).reason is MissReason.KEY_MISMATCH


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("n", [0, 17, ALIGNMENT, 2 * PIECE + 9])
def test_precomputed_checksum_is_written_as_given(tmp_path: Path, direct: bool, n: int) -> None:
    """store_block(checksum=) trusts the caller (the GPU hashed it); a wrong value can only cause misses."""
    direct = direct and blockfile.probe_o_direct(tmp_path)
    payload = payload_of(n)
    right, wrong = tmp_path / "right.kvfs", tmp_path / "wrong.kvfs"
    assert store_block(right, payload, IDENT, checksum=payload_checksum(payload), direct=direct).outcome is (
        StoreOutcome.STORED
    )
    store_block(wrong, payload, IDENT, checksum=payload_checksum(payload) ^ 1, direct=direct)
    assert right.read_bytes() == _stored_normally(tmp_path, payload)
    out = aligned_buffer(n)
    assert load_block(right, IDENT, out, direct=direct).ok
    assert load_block(wrong, IDENT, out, direct=direct).reason is MissReason.CHECKSUM_MISMATCH


def _stored_normally(tmp_path: Path, payload: memoryview) -> bytes:
    path = tmp_path / "normal.kvfs"
    store_block(path, payload, IDENT)
    return path.read_bytes()


def test_short_vectored_io_resumes_at_the_right_byte() -> None:
    """After a short preadv/pwritev of n bytes the remaining vector starts exactly at byte n."""
    data = bytes(range(30))
    for n in range(0, 31):
        pending = [
            memoryview(data)[0:10],
            memoryview(data)[10:10],
            memoryview(data)[10:25],
            memoryview(data)[25:],
        ]
        pending = [v for v in pending if len(v)]
        blockfile._advance(pending, n)
        assert b"".join(bytes(v) for v in pending) == data[n:]
        assert all(len(v) for v in pending)
