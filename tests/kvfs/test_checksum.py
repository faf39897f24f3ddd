"""The payload checksum is xxh3-64 (seed 0) over any buffer type, and detects single bit flips."""

from __future__ import annotations

import mmap
import os

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfs.checksum import CHECKSUM_ALGO_ID, CHECKSUM_ALGO_NAME, GIL_RELEASE_MIN_BYTES, checksum64


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
