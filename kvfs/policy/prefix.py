"""Prefix-aware LRU with an adaptive bonus for reused blocks: the default eviction policy (`DEFAULT_POLICY`).

Order: every block's key is its last access; blocks already reused (`hits > 0`) get a bonus of `beta` times the
tier's recency span (newest minus oldest last access), so they outlive never-reused blocks of up to that age.
Ties evict the deeper chain position first.  `beta = 0` is exactly LRU.

Why this keeps usable prefixes:

* vLLM loads only the leading run of a prompt's blocks that are present, so a block whose parent is gone
  (an orphan: the catalog marks the children of every block it removes, where writers record parents) can
  never be loaded until its chain is sent again: orphans go first, oldest first.
* A prefix extended two ways leaves the older branch behind: a conversation's next turn replaces the previous
  turn's last (partial) block with a longer one, a regenerated answer replaces the old one.  A leaf that was
  never read and whose parent got a newer child (`superseded`, marked by the catalog) is almost never read
  again: such leaves go right after orphans, oldest first.
* A request touches all its blocks, so a chain's head is always at least as recent as its tail, and has at
  least as many hits: under this order a tail always goes before its head, and a block never outlives its prefix (no dead tails are created; the
  bonus depends only on `hits`, which never increases along a chain).
* A chain is valued by how recently and how often its prefix is reused: recency through `last_access`, reuse
  through the bonus, which the head of a shared prefix earns first and keeps longest.
* Most new blocks are the unique tail of one request; a reused block is a shared prefix (system prompt, tool
  description, conversation history).  The bonus keeps shared prefixes through bursts of one-off blocks,
  which plain LRU lets flush them.

The bonus is not a tuned constant: it adapts online from regret, as ARC adapts its target.  Blocks evicted
for capacity or quota are remembered as ghosts with their class (`kvfs.catalog.ghosts`).  A ghost of a
never-reused block stored again says the bonus cost a hit (step down); a ghost of a reused block stored again
says the bonus was too small (step up); each step is weighted by the other class's ghost count, so the rarer
evidence counts more.  On traffic where reuse does not predict reuse the bonus decays to 0 and the order is
LRU's.  The bonus and ghosts live in the catalog, so restarts, fail-over and `kvfs gc` continue the same state.

`order()` and `adapt()` are the policy: the catalog planner feeds them four catalog streams, one per partial
LRU index (`candidates`), the replay feeds them its in-memory tier (`kvfs.replay.memory`), so both run the same
decisions.  The bonus adapts in `prepare()`, once before each pass (`ghosts.settle`); `candidates()` only
reads the stored bonus, so `kvfs ls` changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from kvfs import metrics
from kvfs.catalog import CatalogError, ghosts
from kvfs.catalog.streams import BlockClass
from kvfs.policy import register_policy
from kvfs.policy.base import Candidate, EvictedBlock, EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

# The bonus is at most a quarter of the tier's recency span: a reused block never outlives a fresh one more than
# a quarter turnover younger.  Run on the whole replay suite (docs/policy.md), a cap of 0.5 kept about twice the
# hits above LRU's but fell below LRU in 8 of 52 trace x size cells instead of 5; never worse than LRU comes
# first.
BETA_MAX = 0.25
BETA_STEP = 0.02
BETA_INITIAL = 0.0  # start as LRU; evidence moves it
# Ghosts are kept for this many recency spans.  With superseded leaves evicted first, 1 span was the only
# setting tried with no suite cell below LRU (3 spans: one, Mooncake at 2%; docs/policy.md).
HORIZON = 1.0
log = logging.getLogger("kvfs.policy")


class Ordered(Protocol):
    @property
    def last_access(self) -> float: ...
    @property
    def chain_pos(self) -> int: ...


T = TypeVar("T", bound=Ordered)


def adapt(
    returned_fresh: int, returned_reused: int, ghosts_fresh: int, ghosts_reused: int, beta: float
) -> float:
    """The new bonus after `returned_*` ghosts of each class were stored again since the last pass."""
    up = max(1.0, max(1, ghosts_fresh) / max(1, ghosts_reused))
    down = max(1.0, max(1, ghosts_reused) / max(1, ghosts_fresh))
    beta += BETA_STEP * (returned_reused * up - returned_fresh * down)
    return min(BETA_MAX, max(0.0, beta))


def order(
    orphans: Iterable[T], superseded: Iterable[T], fresh: Iterable[T], reused: Iterable[T], bonus: float
) -> Iterator[tuple[T, bool | None]]:
    """The eviction order from four LRU-ordered streams (oldest first, deeper chain position first on ties):
    orphans (blocks whose parent is gone) first; then superseded leaves (never read, and their parent has a
    newer child); then never-reused and reused blocks merged on key = last access (+ `bonus` for reused ones),
    ties: deeper position, then the never-reused block.
    Yields (block, was reused), with None for orphans and superseded leaves (they leave no ghost)."""
    for item in orphans:
        yield item, None
    for item in superseded:
        yield item, None
    # A two-way merge by hand (the same order as heapq.merge on (key, -chain_pos, class); measured no faster).
    fresh_it, reused_it = iter(fresh), iter(reused)
    f = next(fresh_it, None)
    r = next(reused_it, None)
    while r is not None and f is not None:
        key_r, key_f = r.last_access + bonus, f.last_access
        if key_r < key_f or (key_r == key_f and r.chain_pos > f.chain_pos):
            yield r, True
            r = next(reused_it, None)
        else:
            yield f, False
            f = next(fresh_it, None)
    if r is not None:
        yield r, True
        for item in reused_it:
            yield item, True
    if f is not None:
        yield f, False
        for item in fresh_it:
            yield item, False


@register_policy
class PrefixPolicy(EvictionPolicy):
    name: ClassVar[str] = "prefix"
    description: ClassVar[str] = (
        "prefix-aware LRU: blocks whose parent is gone first, then never-read leaves whose parent got a newer "
        "child; reused blocks get an adaptive bonus (learned from evicted blocks that come back); ties: deeper "
        "prefix-chain position first"
    )

    def __init__(self) -> None:
        self.beta = BETA_INITIAL
        # Class of each block offered this pass (block id -> was reused), for the ghosts `evicted` records.
        self._offered: dict[int, bool] = {}

    def prepare(self, catalog: Catalog) -> None:
        """Adapt the bonus from re-stores since the last pass (a pass calls this once, before planning)."""
        try:
            settled = ghosts.settle(
                catalog, policy=self.name, adapt=adapt, initial_beta=BETA_INITIAL, horizon=HORIZON
            )
        except CatalogError as exc:
            # Bookkeeping only: this pass orders by the bonus stored last time; nothing else is lost.
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="settle").inc()
            log.warning("prefix: bonus update failed, this pass keeps the last bonus: %s", exc)
            return
        metrics.POLICY_RESTORES.inc(settled.returned_fresh + settled.returned_reused)
        self.beta = settled.beta

    def bonus(self, catalog: Catalog) -> float:
        """The stored bonus in seconds of recency (beta times the tier's recency span).  Reads only."""
        self.beta, span = ghosts.bonus(catalog, policy=self.name, default_beta=BETA_INITIAL)
        return self.beta * span

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
        bonus = self.bonus(catalog)
        # Each class from its partial LRU index, so a rare class costs nothing to look for.
        orphans = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.ORPHAN)
        superseded = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.SUPERSEDED)
        fresh = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.FRESH)
        reused = catalog.stream_candidates(namespace_ids, protect_after, BlockClass.REUSED)
        if len(self._offered) > 4_000_000:  # victims never executed (dry runs): forget, do not grow
            self._offered.clear()
        offered_classes = self._offered
        offered = 0
        try:
            for cand, was_reused in order(orphans, superseded, fresh, reused, bonus):
                if was_reused is not None:  # an orphan or a superseded leaf is no regret of the bonus
                    offered_classes[cand.block_id] = was_reused
                yield cand
                offered += cand.size
                if offered >= limit_bytes:
                    return
        finally:
            orphans.close()
            superseded.close()
            fresh.close()
            reused.close()

    def evicted(self, catalog: Catalog, victims: Sequence[EvictedBlock]) -> None:
        if not victims:
            return
        offered = self._offered
        rows = []
        for v in victims:
            # Only blocks this policy offered with a class become ghosts (orphans and others do not).
            was_reused = offered.pop(getattr(v, "block_id", None), None)
            if was_reused is not None:
                rows.append((v.key, v.last_access, was_reused))
        try:
            ghosts.remember(catalog, self.name, rows, keep_newest=False)
        except CatalogError as exc:
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="remember").inc()
            log.warning("prefix: recording %d ghosts failed: %s", len(victims), exc)
