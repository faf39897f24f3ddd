"""Prefix-chain positions of offload keys, for the journal's STORE records (the evictor's policies evict the
deeper position first on a last-access tie, so a prefix's head outlives its tail).

vLLM's offloading scheduler records, per request, the end-token position of every offload key it hands out
(`ReqContext.get_offload_key_position`, always a whole number of chunks for prefix keys).  A key's chain
position is then its chunk index: end_tokens // tokens_per_chunk - 1.  Where the position is missing or not a
whole chunk, the answer is -1 (unknown): a wrong position would be worse than none.  No vLLM import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
