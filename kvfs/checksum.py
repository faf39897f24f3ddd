"""The payload checksum of block files: xxh3-64 (the `xxhash` package).

xxh3 runs at memory-bandwidth class speed on one core (see `python -m kvfs.bench.checksum`), several times
zlib's CRC32, so validating every load costs little next to the read itself.  The algorithm id is written into
each block header, so a later format can switch algorithms without breaking old files.
"""

from __future__ import annotations

import mmap
from typing import TypeAlias

import xxhash

# Anything exposing the buffer protocol; `collections.abc.Buffer` needs Python 3.12.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

CHECKSUM_ALGO_ID = 1  # xxh3_64, seed 0
CHECKSUM_ALGO_NAME = "xxh3_64"

_xxh3_64 = xxhash.xxh3_64_intdigest
_xxh3_64_stream = xxhash.xxh3_64
# python-xxhash's one-shot functions hold the GIL for the whole hash, while its streaming `update()` releases it
# above 64 KiB (measured by `python -m kvfs.bench.checksum`): block payloads go through `update()` so the
# connector's I/O threads can checksum in parallel; small buffers keep the cheaper one-shot call.
GIL_RELEASE_MIN_BYTES = 1 << 16


def checksum64(buf: Buffer) -> int:
    """xxh3-64 (seed 0) of a bytes-like object, as an unsigned 64-bit int."""
    if len(buf) > GIL_RELEASE_MIN_BYTES:
        hasher = _xxh3_64_stream()
        hasher.update(buf)
        return hasher.intdigest()
    return _xxh3_64(buf)
