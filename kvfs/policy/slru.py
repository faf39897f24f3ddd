"""Segmented LRU with a probation segment (`--policy slru`).

Blocks that were never read again since they were stored (`hits = 0`) are on probation; blocks read at least
once are protected.  Probation may hold `PROBATION_SHARE` of what stays after the pass; what it holds beyond
that goes first, oldest first.  Then protected blocks go in LRU order, and only when they are gone the rest of
probation.  Inside each segment, ties evict the deeper prefix-chain position first, as in `lru`.

Why: on prefix-reuse traffic most stored blocks are the unique tail of one request (a new question, a one-off
document) and are never read again, while a block read once is read again with high probability (0.84 against
0.42 on the Mooncake trace).  Plain LRU lets every burst of one-off blocks flush the reused prefixes;
probation bounds how much of the tier one-off traffic can take, and still gives every new block a window to
prove itself.  See docs/policy.md for the measurements behind the share.

State: only `hits`, `last_access`, `chain_pos` and `size` of the catalog rows, so the order survives evictor
restarts and is the same on every replica.  Cost per pass: two aggregates (total and probation bytes in
scope) and index-ordered scans of `ix_blocks_lru` that stop as soon as enough bytes are offered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from kvfs.catalog.streams import BlockClass
from kvfs.policy import register_policy
from kvfs.policy.base import Candidate, EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

# Share of the bytes that stay after a pass that never-reused blocks may keep.  Chosen on five traces
# (docs/policy.md): 0.33-0.5 is flat on prefix-reuse traces, smaller shares starve new sessions before their
# second turn, larger ones let one-off floods back in.
PROBATION_SHARE = 0.5


@register_policy
class SegmentedLruPolicy(EvictionPolicy):
    name: ClassVar[str] = "slru"
    description: ClassVar[str] = (
        "segmented LRU: never-reused blocks beyond a probation share go first, then LRU; "
        "ties: deeper prefix-chain position first"
    )

    def __init__(self, probation_share: float = PROBATION_SHARE) -> None:
        if not 0.0 <= probation_share <= 1.0:
            raise ValueError(f"probation share must be within [0, 1]: {probation_share}")
        self.probation_share = probation_share

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
        # (all bytes, probation bytes) in scope, protected blocks included: they stay, so they count.
        total, probation_bytes = catalog.segment_bytes(namespace_ids)
        yield from self.ordered(catalog, namespace_ids, protect_after, limit_bytes, total, probation_bytes)

    def ordered(
        self,
        catalog: Catalog,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
        total: int,
        probation_bytes: int,
    ) -> Iterator[Candidate]:
        """The eviction order, given the scope's total and probation bytes (`Catalog.segment_bytes`)."""
        keep = max(0, total - limit_bytes)
        surplus = probation_bytes - int(self.probation_share * keep)
        # Generators pause between segments: probation is resumed where its surplus ended.
        probation = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.PROBATION)
        protected = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.PROTECTED)
        offered = 0
        try:
            # 1. probation beyond its share, 2. protected blocks, 3. the rest of probation.
            for stream, budget in ((probation, surplus), (protected, None), (probation, None)):
                taken = 0
                if budget is not None and budget <= 0:
                    continue
                for cand in stream:
                    yield cand
                    offered += cand.size
                    taken += cand.size
                    if offered >= limit_bytes:
                        return
                    if budget is not None and taken >= budget:
                        break
        finally:
            probation.close()
            protected.close()
