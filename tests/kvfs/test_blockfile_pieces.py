"""Block payloads are hashed and moved piece by piece: sizes around the piece size, unaligned tails, a flipped
bit or a short file in a later piece, all with the same on-disk format (one-shot xxh3 of the payload)."""

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
from kvfs.checksum import checksum64

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
    assert header.payload_checksum == checksum64(bytes(payload))  # the one-shot digest: format unchanged
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
        assert blockfile._read_hashed(fd, out, n, 0) == -1
        assert blockfile._read_hashed(fd, out, 2 * PIECE, 0) == checksum64(bytes(payload[: 2 * PIECE]))
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
