"""Checksums of block files, built on xxh3-64 (the `xxhash` package).

xxh3 runs at memory-bandwidth class speed on one core (see `python -m tools.bench.checksum`), several times
zlib's CRC32.  Headers carry `checksum64` of their own bytes.  Payloads carry one of two algorithms, named by id
in each header so that both stay readable:

* 1, `xxh3_64`: xxh3-64 of the whole payload (files written before piece checksums).
* 2, `xxh3_64_pieces` (written now): xxh3-64 of the little-endian 64-bit xxh3-64 digests of the payload's
  1 MiB pieces (the last one shorter; none for an empty payload).  Same strength against corruption, but the
  pieces are independent, so a GPU hashes a payload already in its memory in parallel (`connector.devhash`):
  the connector's I/O threads then never pass over the payload with the CPU, which on an H100 host was the
  largest cost of a store or load next to the file I/O itself (docs/benchmarks.md, "Connector data path").
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from typing import Protocol, TypeAlias

import xxhash

from kvfs import nativeio

# Anything exposing the buffer protocol; `collections.abc.Buffer` needs Python 3.12.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

CHECKSUM_ALGO_ID = 1  # header checksums, and payloads of files written before algorithm 2
CHECKSUM_ALGO_NAME = "xxh3_64"
PIECES_ALGO_ID = 2  # payloads: xxh3-64 over the xxh3-64 digests of HASH_PIECE_BYTES pieces
PIECES_ALGO_NAME = "xxh3_64_pieces"
PAYLOAD_ALGOS = {CHECKSUM_ALGO_ID: CHECKSUM_ALGO_NAME, PIECES_ALGO_ID: PIECES_ALGO_NAME}
# Fixed by the format (never tune it: it is part of the checksum).  1 MiB: a GPU program hashes one piece
# (XXH3 is sequential inside it), a 32 MiB payload in ~0.24 ms on an H100 — well under its PCIe copy; on the
# CPU each piece is one hasher call that releases the GIL, and with 16 I/O threads every GIL hand-off costs:
# 256 KiB pieces halved CPU-hashed loads there (docs/benchmarks.md, "Connector data path").
HASH_PIECE_BYTES = 1 << 20

_xxh3_64 = xxhash.xxh3_64_intdigest
_xxh3_64_stream = xxhash.xxh3_64
# python-xxhash's one-shot functions hold the GIL for the whole hash, while its streaming `update()` releases it
# above 64 KiB (measured by `python -m tools.bench.checksum`): block payloads go through `update()` so the
# connector's I/O threads can checksum in parallel; small buffers keep the cheaper one-shot call.
GIL_RELEASE_MIN_BYTES = 1 << 16
_PACK_DIGEST = struct.Struct("<Q").pack  # one piece digest as algorithm 2 hashes it


def checksum64(buf: Buffer) -> int:
    """xxh3-64 (seed 0) of a bytes-like object, as an unsigned 64-bit int."""
    if len(buf) > GIL_RELEASE_MIN_BYTES:
        hasher = _xxh3_64_stream()
        hasher.update(buf)
        return hasher.intdigest()
    return _xxh3_64(buf)


class PayloadHasher(Protocol):
    def update(self, buf: Buffer, /) -> None: ...
    def intdigest(self) -> int: ...


def combine_piece_digests(digests: Sequence[int]) -> int:
    """Algorithm 2's value from its pieces' digests (in payload order)."""
    return combine_packed_digests(struct.pack(f"<{len(digests)}Q", *digests))


def combine_packed_digests(packed: Buffer) -> int:
    """Algorithm 2's value from its pieces' digests already packed as little-endian uint64 (how an int64 tensor
    of digests lies in memory on a little-endian host)."""
    return _xxh3_64(packed)


class PieceHasher:
    """Streaming algorithm 2: feed the payload in any slicing; `intdigest()` is its checksum."""

    __slots__ = ("_current", "_digests", "_filled")

    def __init__(self) -> None:
        self._digests: list[int] = []
        self._current = _xxh3_64_stream()
        self._filled = 0

    def update(self, buf: Buffer, /) -> None:
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        pos, n = 0, len(view)
        while pos < n:
            take = min(n - pos, HASH_PIECE_BYTES - self._filled)
            self._current.update(view[pos : pos + take])
            self._filled += take
            pos += take
            if self._filled == HASH_PIECE_BYTES:
                self._digests.append(self._current.intdigest())
                self._current.reset()
                self._filled = 0

    def piece_digests(self) -> list[int]:
        return self._digests + ([self._current.intdigest()] if self._filled else [])

    def intdigest(self) -> int:
        return combine_piece_digests(self.piece_digests())


def piece_digests(buf: Buffer) -> list[int]:
    """Algorithm 2's piece digests of `buf` (a payload, or a part of one starting on a piece boundary)."""
    # One hasher call a piece (`checksum64`: releasing the GIL above GIL_RELEASE_MIN_BYTES, one-shot below), not
    # PieceHasher's streaming loop: a small payload is one call on the connector's per-file path.
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return [checksum64(view[i : i + HASH_PIECE_BYTES]) for i in range(0, len(view), HASH_PIECE_BYTES)]


def payload_hasher(algo: int) -> PayloadHasher:
    """A streaming hasher for payload checksum algorithm `algo` (1 or 2)."""
    if algo == PIECES_ALGO_ID:
        return PieceHasher()
    if algo == CHECKSUM_ALGO_ID:
        return _xxh3_64_stream()
    raise ValueError(f"unknown payload checksum algorithm {algo}")


def payload_checksum(buf: Buffer, algo: int = PIECES_ALGO_ID) -> int:
    """The payload checksum of `buf` under algorithm `algo`."""
    if algo == PIECES_ALGO_ID:
        view = memoryview(buf)
        native = nativeio.MODULE
        if native is not None and view.nbytes > GIL_RELEASE_MIN_BYTES:  # one call, the GIL released once
            return native.pieces_checksum(view if view.c_contiguous else view.tobytes(), HASH_PIECE_BYTES)  # type: ignore[no-any-return]
        if (
            0 < view.nbytes <= HASH_PIECE_BYTES
        ):  # one piece (a small block): its digest's digest, in two calls
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            return _xxh3_64(_PACK_DIGEST(checksum64(view)))
        return combine_piece_digests(piece_digests(view))
    hasher = payload_hasher(algo)
    hasher.update(buf)
    return hasher.intdigest()


def _check_native() -> None:
    """The compiled path (kvfs.nativeio) hashes payloads as it stores and loads them: it is used only if it
    agrees with this module's algorithm 2 (computed here in Python) on payloads around the piece boundaries."""
    native = nativeio.MODULE
    if native is None:
        return
    pattern = bytes(range(251)) * (HASH_PIECE_BYTES // 251 * 3)
    for n in (0, 1, 4096, HASH_PIECE_BYTES, HASH_PIECE_BYTES + 7, 2 * HASH_PIECE_BYTES + 4096):
        sample = pattern[:n]
        expected = combine_piece_digests(piece_digests(sample))
        if native.pieces_checksum(sample, HASH_PIECE_BYTES) != expected:
            nativeio.disable(f"its checksum of {n} bytes differs from kvfs.checksum's")
            return


_check_native()
