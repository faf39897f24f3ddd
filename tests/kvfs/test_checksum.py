"""Header checksums are xxh3-64 (seed 0) over any buffer type and detect single bit flips; payload checksum
algorithm 2 (xxh3-64 over 1 MiB piece digests) does not depend on how the payload is fed."""

from __future__ import annotations

import mmap
import os

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfs.checksum import (
    CHECKSUM_ALGO_ID,
    CHECKSUM_ALGO_NAME,
    GIL_RELEASE_MIN_BYTES,
    HASH_PIECE_BYTES,
    PAYLOAD_ALGOS,
    PIECES_ALGO_ID,
    PieceHasher,
    checksum64,
    combine_packed_digests,
    combine_piece_digests,
    payload_checksum,
    payload_hasher,
    piece_digests,
)


def test_known_vectors() -> None:
    # Reference values of XXH3_64bits with seed 0 (xxHash's own test vectors).
    assert checksum64(b"") == 0x2D06800538D394C2
    assert CHECKSUM_ALGO_ID == 1 and CHECKSUM_ALGO_NAME == "xxh3_64"


@given(st.binary(max_size=5000))
@settings(max_examples=100)
def test_same_value_for_every_buffer_type(data: bytes) -> None:
    expected = checksum64(data)
    assert checksum64(bytearray(data)) == expected
    assert checksum64(memoryview(data)) == expected
    buf = mmap.mmap(-1, max(1, len(data)))
    buf[: len(data)] = data
    assert checksum64(memoryview(buf)[: len(data)]) == expected
    assert 0 <= expected < 2**64


@given(st.binary(min_size=1, max_size=4096), st.data())
@settings(max_examples=200)
def test_single_bit_flip_changes_checksum(data: bytes, draw: st.DataObject) -> None:
    bit = draw.draw(st.integers(min_value=0, max_value=len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert checksum64(bytes(flipped)) != checksum64(data)


def test_streaming_path_for_large_buffers_equals_one_shot() -> None:
    for n in (GIL_RELEASE_MIN_BYTES, GIL_RELEASE_MIN_BYTES + 1, 3 << 20):
        data = os.urandom(n)
        assert checksum64(data) == xxhash.xxh3_64_intdigest(data)
        assert checksum64(memoryview(bytearray(data))) == xxhash.xxh3_64_intdigest(data)


@given(st.binary(max_size=3 * HASH_PIECE_BYTES // 64), st.lists(st.integers(0, 4096), max_size=8))
@settings(max_examples=50, deadline=None)
def test_piece_checksum_is_independent_of_how_it_is_fed(data: bytes, cuts: list[int]) -> None:
    data = data * 64  # up to 3 hash pieces
    ref = combine_piece_digests(
        [
            xxhash.xxh3_64_intdigest(data[i : i + HASH_PIECE_BYTES])
            for i in range(0, len(data), HASH_PIECE_BYTES)
        ]
    )
    hasher = PieceHasher()
    pos = 0
    for cut in sorted(c * 97 for c in cuts):
        hasher.update(memoryview(data)[pos : max(pos, min(cut, len(data)))])
        pos = max(pos, min(cut, len(data)))
    hasher.update(data[pos:])
    assert (
        hasher.intdigest()
        == ref
        == payload_checksum(data)
        == payload_checksum(bytearray(data), PIECES_ALGO_ID)
    )


def test_payload_algorithms() -> None:
    data = os.urandom(HASH_PIECE_BYTES + 5)
    assert payload_checksum(data, CHECKSUM_ALGO_ID) == xxhash.xxh3_64_intdigest(data)
    assert payload_checksum(data) != payload_checksum(data, CHECKSUM_ALGO_ID)
    assert payload_checksum(b"") == xxhash.xxh3_64_intdigest(b"")  # no pieces: the digest of an empty list
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    assert payload_checksum(bytes(flipped)) != payload_checksum(data)
    assert PAYLOAD_ALGOS == {1: "xxh3_64", 2: "xxh3_64_pieces"}
    try:
        payload_hasher(7)
    except ValueError as exc:
        assert "7" in str(exc)
    else:
        raise AssertionError("unknown algorithm accepted")


def test_packed_digests_combine_like_the_digest_list() -> None:
    """The GPU path hashes its int64 digest buffer's bytes as they lie in memory: the same value as the list."""
    import numpy as np

    digests = [xxhash.xxh3_64_intdigest(os.urandom(64)) for _ in range(33)] + [0, (1 << 64) - 1]
    as_int64 = np.array(digests, dtype=np.uint64).view(np.int64)  # how a torch int64 tensor holds them
    assert combine_packed_digests(memoryview(as_int64).cast("B")) == combine_piece_digests(digests)
    assert combine_packed_digests(b"") == combine_piece_digests([])


def test_piece_digests_of_any_buffer_shape_match_the_streaming_hasher() -> None:
    # The per-file path hashes pieces with one hasher call each; a streaming PieceHasher is the reference.
    for n in (0, 1, GIL_RELEASE_MIN_BYTES, HASH_PIECE_BYTES, HASH_PIECE_BYTES + 8, 3 * HASH_PIECE_BYTES - 8):
        data = os.urandom(n)
        hasher = PieceHasher()
        hasher.update(data)
        words = memoryview(bytearray(data)).cast("B").cast("Q", (n // 64, 8)) if n and n % 64 == 0 else data
        assert piece_digests(words) == piece_digests(data) == hasher.piece_digests()
        assert payload_checksum(words) == hasher.intdigest()
