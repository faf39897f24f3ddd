"""2Q on the catalog: probation for new blocks, history of evicted ones, LRU for the rest (`--policy 2q`).

The shape of Johnson and Shasha's 2Q, expressed on catalog rows:

* A1in, probation: blocks never read since they were stored (`hits = 0`).  It may keep
  `PROBATION_SHARE` of what stays after a pass; beyond that its oldest blocks go first.
* A1out, ghosts: keys of blocks evicted recently for capacity or quota (`kvfs.catalog.ghosts`, recorded by
  `evicted()` once the executor deleted them, so dry runs and `kvfs ls` record nothing).  A block stored
  again while its key is remembered skips probation: `prepare()`, before each pass, counts the re-store as a
  use (`ghosts.revive`).  Ghosts last seen more than `HORIZON` times the tier's recency span ago are dropped,
  so the store stays a few times the size of what the tier evicts per turnover.
* Am, protected: blocks read at least once, evicted in LRU order once probation is within its share; the
  rest of probation goes last.

Ties inside a segment evict the deeper prefix-chain position first, so a prefix's head outlives its tail.

Why: on prefix-reuse traffic most new blocks are the unique tail of one request and are never read again,
while a block read once is read again with high probability.  Probation keeps one-off floods (new documents,
one-turn chats) from flushing reused prefixes; the history lets a prefix that comes back after being evicted
(a session resumed after a long pause, a popular document) get in on its second visit instead of its third.
docs/policy.md has the measurements: the share and horizon were chosen flat across five traces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from kvfs import metrics
from kvfs.catalog import CatalogError, ghosts
from kvfs.policy import register_policy
from kvfs.policy.base import EvictedBlock
from kvfs.policy.slru import SegmentedLruPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

PROBATION_SHARE = 0.1
# Ghosts are kept for this many times the tier's recency span (docs/policy.md: 2 to 8 measure the same).
HORIZON = 3.0
log = logging.getLogger("kvfs.policy")


@register_policy
class TwoQueuePolicy(SegmentedLruPolicy):
    name: ClassVar[str] = "2q"
    description: ClassVar[str] = (
        "2Q: never-reused blocks beyond 10% go first, then LRU; blocks re-stored after eviction skip "
        "probation (history kept in the catalog); ties: deeper prefix-chain position first"
    )

    def __init__(self, probation_share: float = PROBATION_SHARE, horizon: float = HORIZON) -> None:
        super().__init__(probation_share)
        if horizon < 0:
            raise ValueError(f"history horizon must not be negative: {horizon}")
        self.horizon = horizon

    def prepare(self, catalog: Catalog) -> None:
        try:
            metrics.POLICY_RESTORES.inc(
                ghosts.revive(catalog, policy=self.name, horizon=self.horizon).revived
            )
        except CatalogError as exc:
            # Bookkeeping only: without it re-stored blocks stay on probation this pass; the order is still valid.
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="revive").inc()
            log.warning("2q: re-store check failed, pass goes on without it: %s", exc)

    def evicted(self, catalog: Catalog, victims: Sequence[EvictedBlock]) -> None:
        # Blocks deleted to keep the rest (capacity, quota) become ghosts: if one comes back, it is a re-store.
        if not victims:
            return
        try:
            ghosts.remember(
                catalog, self.name, ((v.key, v.last_access, False) for v in victims), keep_newest=True
            )
        except CatalogError as exc:
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="remember").inc()
            log.warning("2q: recording %d ghosts failed: %s", len(victims), exc)
