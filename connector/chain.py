"""Prefix-chain positions and parents of offload keys, for the journal's STORE records (the evictor's policies
evict the deeper position first on a last-access tie, so a prefix's head outlives its tail, and evict first
the blocks whose parent is gone, which vLLM can never load).

vLLM's offloading scheduler records, per request, the end-token position of every offload key it hands out
(`ReqContext.get_offload_key_position`, always a whole number of chunks for prefix keys).  A key's chain
position is then its chunk index: end_tokens // tokens_per_chunk - 1.  Where the position is missing or not a
whole chunk, the answer is -1 (unknown): a wrong position would be worse than none.  No vLLM import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from connector.naming import offload_key_parts

UNKNOWN = -1


def chain_position(key: bytes, req_context: Any, chunk_tokens: Mapping[int, int]) -> int:
    """Chunk index of `key` in its request's prefix chain (0 = first chunk), or -1 when not derivable."""
    getter = getattr(req_context, "get_offload_key_position", None)
    if getter is None:  # a vLLM without per-key positions
        return UNKNOWN
    end = getter(key)
    tokens = chunk_tokens.get(offload_key_parts(key)[1])
    if not isinstance(end, int) or not tokens or end <= 0 or end % tokens:
        return UNKNOWN
    return end // tokens - 1


def chain_positions(keys: Iterable[bytes], req_context: Any, chunk_tokens: Mapping[int, int]) -> list[int]:
    return [chain_position(k, req_context, chunk_tokens) for k in keys]


def chain_parents(
    keys: Sequence[bytes], positions: Sequence[int], block_hash: Callable[[bytes], str]
) -> list[str | None]:
    """The parent's block hash of each key: the job's previous key of the same KV group when its chain position
    is exactly one less (so it is the chunk just before).  None where that is not known: the first key of a
    job (its parent was stored earlier), or positions missing."""
    last: dict[int, tuple[int, bytes]] = {}  # group -> (position, key) of the latest key seen
    parents: list[str | None] = []
    for key, pos in zip(keys, positions, strict=True):
        group = offload_key_parts(key)[1]
        prev = last.get(group)
        parents.append(block_hash(prev[1]) if prev is not None and pos >= 1 and prev[0] == pos - 1 else None)
        last[group] = (pos, key)
    return parents
