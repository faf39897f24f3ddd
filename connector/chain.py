"""Prefix-chain positions and parents of offload keys, for the journal's STORE records (the evictor's policies
evict the deeper position first on a last-access tie, so a prefix's head outlives its tail, and evict first
the blocks whose parent is gone, which vLLM can never load).

vLLM's offloading scheduler records, per request, the end-token position of every offload key it hands out
(`ReqContext.get_offload_key_position`, always a whole number of chunks for prefix keys).  A key's chain
position is then its chunk index: end_tokens // tokens_per_chunk - 1.  Where the position is missing or not a
whole chunk, the answer is -1 (unknown): a wrong position would be worse than none.  No vLLM import.

A key's parent is the request's key of the chunk just before it.  vLLM 0.32/0.33 record the position of every
offload key of a request, prefix hits included (`OffloadingScheduler.update_offload_keys`), but expose only the
key -> position direction; the reverse comes from the dict behind it (`ReqContext._offload_key_positions`).
Without it (another vLLM), a parent is known only inside one store job, from the job's own keys: the first
chunk a turn adds to a stored prefix then has none, and neither orphan nor superseded marking sees that branch.
A request's records also share one time (`request_time`): the request's, not each file's.  Its stores finish
on parallel I/O threads in any order (and a chunked prefill stores its head steps before its tail), so stamped
one by one a chain's head could be older than its tail, and every recency order would take the head first at a
pass's boundary, leaving the tail unloadable.  One time leaves the tie to the chain position (deeper first), as
every replay assumes, and lets the evictor regroup the request's records whatever order they arrive in
(kvfs/policy/regroup.py): `adaptive` on `sysprompt` replayed through the catalog, stores stamped in completion
order, 0.489 (median of 9 orders) against 0.501 stamped alike (`python -m tools.bench.engine_records`).

tests/connector/test_scheduler.py checks the contract on a real vLLM scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

from connector.naming import offload_key_parts

UNKNOWN = -1


class _RequestTime(float):
    """A request's journal time, kept in its ReqContext (vLLM's per-request state is keyed by type)."""


def request_time(req_context: Any) -> float:
    """The time every journal record of this request carries: when kvfs first saw the request (its first lookup,
    load or store), kept in the request's context.  Without per-request state (another vLLM), now."""
    getter = getattr(req_context, "get_state", None)
    if getter is None:
        return time.time()
    stamp = getter(_RequestTime)
    if stamp is None:
        stamp = _RequestTime(time.time())
        req_context.set_state(stamp)
    return float(stamp)


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


class _KeysByEnd:
    """(group, end token) -> key over one request's offload keys, kept in its ReqContext and extended with the
    keys vLLM added since the last call (positions are only ever appended), so each store costs O(new keys)
    on the scheduler thread instead of a pass over the whole request."""

    def __init__(self) -> None:
        self.by_end: dict[tuple[int, int], bytes] = {}
        self.seen = 0

    def update(self, positions: Mapping[bytes, Any]) -> dict[tuple[int, int], bytes]:
        new = len(positions) - self.seen
        if new > 0:
            for key, end in islice(reversed(positions.items()), new):  # type: ignore[call-overload]
                if isinstance(end, int):
                    self.by_end[(offload_key_parts(key)[1], end)] = key
            self.seen = len(positions)
        return self.by_end


def parent_keys(
    keys: Sequence[bytes], req_context: Any, chunk_tokens: Mapping[int, int]
) -> list[bytes | None]:
    """The request's offload key of the chunk just before each key (same KV group), None where not known."""
    positions = getattr(req_context, "_offload_key_positions", None)
    if not isinstance(positions, Mapping) or not keys:
        return [None] * len(keys)
    index = req_context.get_state(_KeysByEnd) if hasattr(req_context, "get_state") else None
    if index is None:
        index = _KeysByEnd()
        if hasattr(req_context, "set_state"):
            req_context.set_state(index)
    by_end = index.update(positions)
    parents: list[bytes | None] = []
    for key in keys:
        group = offload_key_parts(key)[1]
        end, tokens = positions.get(key), chunk_tokens.get(group)
        ok = isinstance(end, int) and tokens and end > tokens and end % tokens == 0
        parents.append(by_end.get((group, end - tokens)) if ok else None)  # type: ignore[operator]
    return parents


def chain_parents(
    keys: Sequence[bytes],
    positions: Sequence[int],
    block_hash: Callable[[bytes], str],
    known: Sequence[bytes | None] | None = None,
) -> list[str | None]:
    """The parent's block hash of each key: its `known` parent key (from `parent_keys`) where given, else the
    job's previous key of the same KV group when its chain position is exactly one less (so it is the chunk just
    before).  None where neither tells: the first key of a job without `known`, or positions missing."""
    last: dict[int, tuple[int, bytes]] = {}  # group -> (position, key) of the latest key seen
    parents: list[str | None] = []
    for i, (key, pos) in enumerate(zip(keys, positions, strict=True)):
        group = offload_key_parts(key)[1]
        prev = last.get(group)
        parent = known[i] if known is not None else None
        if parent is not None:
            parents.append(block_hash(parent))
        else:
            parents.append(
                block_hash(prev[1]) if prev is not None and pos >= 1 and prev[0] == pos - 1 else None
            )
        last[group] = (pos, key)
    return parents
