"""Least recently used: oldest last access first; ties evict the deeper chain position first.

A prefix chain's head is needed by every request that shares the prefix, its tail only by the longest ones, so
among equally old blocks the tail goes first and the head outlives it.  Blocks of unknown position (-1, e.g.
found by a scan) sort after every known position of the same age.  The order is the catalog's candidate
stream (`Catalog.stream_candidates`, kvfs.catalog.streams), the base that `slru`, `2q` and `prefix` refine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from kvfs.catalog.streams import BlockClass
from kvfs.policy import register_policy
from kvfs.policy.base import Candidate, EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog


@register_policy
class LruPolicy(EvictionPolicy):
    name: ClassVar[str] = "lru"
    description: ClassVar[str] = "oldest last access first; ties: deeper prefix-chain position first"

    def candidates(
        self,
        catalog: Catalog,
        *,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
    ) -> Iterator[Candidate]:
        if limit_bytes <= 0:
            return
        rows = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.ALL)
        offered = 0
        try:
            for cand in rows:
                yield cand
                offered += cand.size
                if offered >= limit_bytes:
                    return
        finally:
            rows.close()
