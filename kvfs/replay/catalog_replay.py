"""Replay a trace through the evictor's real policy code, on a real catalog.

Each request becomes the journal records the connector would write (an `access` for every block already
present, a `store` with its chain position for every new one), applied with `Catalog.apply_journal`; when the
tier holds more than `capacity` blocks, `kvfs.eviction.run_pass` (the evictor's pass, with the named policy)
evicts; the tier has rows and no files (`CatalogOnly`), so removing a victim removes its row.  Time is the request's index (one tick a
request), so recency ties are exact and the result does not depend on the trace's clock.

Records are applied lazily, right before a pass needs them (the catalog is always current when the policy
reads it), which keeps a 4,000-request replay to seconds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kvfs.catalog import Catalog
from kvfs.eviction import CatalogOnly, Limits, PassHooks, run_pass
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey, namespace_name
from kvfs.policy import EvictionPolicy, get_policy
from kvfs.replay.sim import SimResult, leading_hits

# Every block counts as one byte: capacity in bytes is capacity in blocks.
BLOCK_UNIT = 1
REPLAY_NAMESPACE = namespace_name({"model_name": "replay"})


def block_key(block: int) -> BlockKey:
    return BlockKey(REPLAY_NAMESPACE, None, 0, f"{block:016x}", "kvfs")


def simulate_catalog_policy(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    policy: EvictionPolicy | str | None = None,
    workdir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    catalog: Catalog | None = None,
) -> SimResult:
    """Hit blocks when `policy` (an instance or a registered name; default: the evictor's) manages the tier;
    `progress(1)` is called after each request.  `catalog`: an empty catalog to replay on (the tests' PostgreSQL
    one) instead of a scratch SQLite file."""
    policy = policy if isinstance(policy, EvictionPolicy) else get_policy(policy)
    if catalog is not None:
        return _run(catalog, requests, capacity, slack, policy, progress)
    with tempfile.TemporaryDirectory(prefix="kvfs-replay-", dir=workdir) as tmp:
        catalog = Catalog.open(f"sqlite:///{Path(tmp) / 'replay.db'}")
        try:
            return _run(catalog, requests, capacity, slack, policy, progress)
        finally:
            catalog.close()


def _run(
    catalog: Catalog,
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int,
    policy: EvictionPolicy,
    progress: Callable[[int], None] | None,
) -> SimResult:
    tier = CatalogTier(catalog, capacity, slack, policy)
    result = SimResult()
    for i, req in enumerate(requests):
        now = float(i + 1)
        result.count(leading_hits(req, tier.present), len(req))
        tier.journal(tier.records(req, now))
        if progress is not None:
            progress(1)
        result.evicted += tier.evict(now)
    return result


class CatalogTier:
    """The replay's tier on `catalog`: rows and no files (`CatalogOnly`), fed journal records, evicted by `policy`
    when it holds more than `capacity` blocks, down to `capacity - slack`.  `order`: how the records journaled
    since the last ingest reach `Catalog.apply_journal` (as journaled, by default)."""

    def __init__(
        self,
        catalog: Catalog,
        capacity: int,
        slack: int,
        policy: EvictionPolicy,
        order: Callable[[list[JournalRecord]], list[JournalRecord]] | None = None,
    ) -> None:
        catalog.ensure_namespace(REPLAY_NAMESPACE, model="replay")
        self.catalog = catalog
        self.capacity = capacity
        self.policy = policy
        self.present: set[int] = set()
        self._pending: list[JournalRecord] = []
        self._order = order
        self._limits = Limits(max_bytes=max(0, capacity - slack) * BLOCK_UNIT, min_age=0.0)
        self._hooks = PassHooks(ingest=self.ingest)

    def records(self, req: Sequence[int], now: float) -> list[JournalRecord]:
        """The journal records a connector writes for request `req` at `now`: an ACCESS for every block already
        present, a STORE with its parent for every new one (now present), each with its chain position."""
        present = self.present
        records = []
        parent: str | None = None  # the previous block's hash
        for pos, block in enumerate(req):
            key = block_key(block)
            if block in present:
                # With its chain position, as a STORE: the records of one request regroup exactly.
                records.append(JournalRecord(RecordKind.ACCESS, key, now, 0, pos))
            else:
                # The parent, as a connector that knows the chain records it (orphans get marked).
                records.append(JournalRecord(RecordKind.STORE, key, now, BLOCK_UNIT, pos, parent))
                present.add(block)
            parent = key.block_hash
        return records

    def journal(self, records: Sequence[JournalRecord]) -> None:
        """Journal `records`; they reach the catalog at the next ingest (lazily: right before a pass)."""
        self._pending.extend(records)

    def ingest(self) -> None:
        if self._pending:
            pending = self._order(self._pending) if self._order is not None else self._pending
            self.catalog.apply_journal(pending, {})
            self._pending.clear()

    def evict(self, now: float) -> int:
        """The evictor's pass (ingest first) when the tier holds more than `capacity` blocks; its victims leave
        `present`.  Returns how many went."""
        if len(self.present) <= self.capacity:
            return 0
        # Blocks used at `now` (this request) are protected: the planner's min_age 0 protects last_access >= now.
        outcome = run_pass(
            self.catalog,
            "",
            self._limits,
            self.policy,
            hooks=self._hooks,
            now=now,
            batch_size=1 << 30,
            remover=CatalogOnly(),
            log_evictions=False,
        )
        for victim in outcome.plan.victims:
            self.present.discard(int(victim.key.block_hash, 16))
        return len(outcome.plan.victims)
