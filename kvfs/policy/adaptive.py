"""`adaptive` on the catalog (`--policy adaptive`): four whole orders on one tier, each pass ordered by the one
whose miniature simulation hit most.

The decisions are the replay's (docs/policy.md, "`adaptive`: the best of four orders"): the candidates
`shares` (the two-share order, kvfs.policy.adaptive_core), `s3fifo` (kvfs.policy.s3fifo's sweep), `2q` (the
two-share order at 2Q's fixed shares) and `prefix` (kvfs.policy.prefix's bonus order), each after orphans
and superseded leaves; the choice among them by shadow hits (kvfs.policy.chooser, the shadows of
kvfs.replay.chooser.Shadows).  On the catalog:

* **Every order's state is kept whatever order runs.**  S3-FIFO's queue, position and counter are on every row
  (schema v8, kept by journal apply); its sweep's moves are applied only when it runs, but its FIFO ghosts are
  recorded and trimmed after every pass (this policy always hands the planner pass writes with their bound).
  One class ghost store (`kvfs.catalog.ghosts`, class at eviction: FRESH, ONCE or FREQUENT, v9) teaches the
  two shares `p, q` and `prefix`'s `beta` on every pass; a re-stored ghost makes its row read once (2Q's and
  the two shares' rule).
* **The shadows** are fed from the journal records the catalog applies (`attach` subscribes, whoever
  ingests: the evictor, `kvfs gc`, a replay), regrouped into requests (kvfs.policy.regroup); a pass sizes them
  from the blocks that stay after it.  They live in memory: after a restart, or in a one-shot `kvfs gc`,
  they start empty and the chooser keeps its last choice (the scores persist) until they have evidence.
* **State row** (`policy_states`, policy `adaptive`): the re-store watermark, `beta`, and as JSON `p`, `q`,
  the decayed scores, the current order and the tier's size in blocks; saved in `prepare` and after each
  pass's deletions, so restarts, fail-over and `kvfs gc` continue.  `candidates` only reads (`kvfs ls`).

`kvfs.replay.chooser.simulate_adaptive` replays the same decisions in memory, block for block
(tests/kvfs/test_replay_adaptive.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from kvfs import metrics
from kvfs.catalog import CatalogError, ghosts
from kvfs.catalog.fifo import PassWrites
from kvfs.catalog.streams import BlockClass
from kvfs.journal import JournalRecord
from kvfs.policy import adaptive_core, chooser, prefix, register_policy
from kvfs.policy.base import Candidate, EvictedBlock, EvictionPolicy
from kvfs.policy.regroup import Regrouper
from kvfs.policy.s3fifo import S3FifoPolicy, ghost_limit
from kvfs.replay.chooser import CANDIDATES, FIFO, PREFIX, SHARES, TWOQ, TWOQ_STATE, Shadows

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

NAME = "adaptive"
log = logging.getLogger("kvfs.policy")


class _State:
    """The state row's JSON: the two shares, the chooser's scores and order, the tier's size in blocks."""

    def __init__(self, shares: adaptive_core.State, scores: chooser.Scores, blocks: int) -> None:
        self.shares = shares
        self.scores = scores
        self.blocks = blocks

    @classmethod
    def parse(cls, text: str | None) -> _State | None:
        """None for no row or a row this code cannot read (then the policy starts afresh, and says so)."""
        if text is None:
            return None
        try:
            raw = json.loads(text)
            hits = tuple(float(h) for h in raw["scores"])
            current = int(raw["current"])
            if len(hits) != len(CANDIDATES) or not 0 <= current < len(CANDIDATES):
                raise ValueError(f"scores for {len(hits)} candidates, current {current}")
            shares = adaptive_core.State(float(raw["p"]), float(raw["q"]))
            return cls(shares, chooser.Scores(hits, current), max(0, int(raw["blocks"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("adaptive: stored state unreadable, starting afresh: %s", exc)
            return None

    def dump(self) -> str:
        return json.dumps(
            {
                "p": self.shares.fresh_share,
                "q": self.shares.once_share,
                "scores": list(self.scores.hits),
                "current": self.scores.current,
                "order": CANDIDATES[self.scores.current],
                "blocks": self.blocks,
            }
        )


@register_policy
class AdaptivePolicy(EvictionPolicy):
    name: ClassVar[str] = NAME
    description: ClassVar[str] = (
        "adaptive: orphans and superseded leaves first, then whichever of four orders (two shares, S3-FIFO, "
        "2Q, prefix) hits most on miniature simulations of the tier fed from the journal"
    )

    def __init__(self) -> None:
        self.shares = adaptive_core.State()
        self.beta = prefix.BETA_INITIAL
        self.shadows = Shadows()
        self._regroup = Regrouper(self.shadows.feed)
        # The evictor ingests on its own thread: records feed the shadows there while a pass reads them.
        self._lock = threading.Lock()
        self._loaded = False
        self._fifo = S3FifoPolicy()
        self._fifo_ran = False
        self._ghost_limit = 0
        self._saved = True
        # Class of each block offered this pass (block id -> FRESH, ONCE or FREQUENT), for `evicted`'s ghosts.
        self._offered: dict[int, int] = {}

    @property
    def choice(self) -> str:
        return self.shadows.choice

    def current_order(self) -> str:
        return self.choice

    def _publish_order(self) -> None:
        current = self.choice
        for name in CANDIDATES:
            metrics.POLICY_ORDER.labels(name).set(1 if name == current else 0)

    # --- state --------------------------------------------------------------------------------------------

    def _load(self, catalog: Catalog) -> None:
        """The stored state, once per instance (later the instance's own is the newer).  Reads only."""
        if self._loaded:
            return
        beta, extra, _span = ghosts.load(catalog, policy=NAME)
        self._loaded = True
        if beta is not None:
            self.beta = beta
        state = _State.parse(extra)
        if state is not None:
            self.shares = state.shares
            with self._lock:
                self.shadows.scores = state.scores
                if state.blocks:
                    self.shadows.size(state.blocks)

    def _state(self) -> str:
        with self._lock:
            scores, blocks = self.shadows.scores, self.shadows.blocks
        return _State(self.shares, scores, blocks).dump()

    def _observe(self, records: Sequence[JournalRecord]) -> None:
        with self._lock:
            self._regroup.add(records)

    def _adapt(
        self, returned: tuple[int, int, int], left: tuple[int, int, int], beta: float, extra: str | None
    ) -> tuple[float, str]:
        # Both adaptive states learn from every pass's ghosts, whichever order made them.  The stored values
        # are the newest (another process may have run a pass since this one loaded them).
        stored = _State.parse(extra)
        shares = stored.shares if stored is not None else self.shares
        self.shares = adaptive_core.adapt(shares, returned, left)
        self.beta = prefix.adapt(returned[0], returned[1] + returned[2], left[0], left[1] + left[2], beta)
        return self.beta, self._state()

    # --- the pass -----------------------------------------------------------------------------------------

    def attach(self, catalog: Catalog) -> None:
        catalog.add_journal_listener(self._observe)
        try:
            self._load(catalog)
        except CatalogError as exc:
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="load").inc()
            log.warning("adaptive: loading the stored state failed, starting afresh: %s", exc)

    def prepare(self, catalog: Catalog) -> None:
        """Feed the shadows the last request, learn from re-stores, save the state (once, before planning)."""
        with self._lock:
            self._regroup.flush()
            self._publish_order()  # the shadows have seen everything ingested: this pass's order
        self._fifo.prepare(catalog)
        self._fifo_ran = False
        self._ghost_limit = 0
        self._saved = False
        try:
            self._load(catalog)
            settled = ghosts.settle_classes(
                catalog,
                policy=NAME,
                horizon=adaptive_core.HORIZON,
                adapt=self._adapt,
                initial_beta=prefix.BETA_INITIAL,
            )
        except CatalogError as exc:
            # Bookkeeping only: this pass orders by the shares and bonus learned last time.
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="settle").inc()
            log.warning("adaptive: ghost settlement failed, this pass keeps the last state: %s", exc)
            return
        metrics.POLICY_RESTORES.inc(sum(settled.returned))

    def take_pass_writes(self) -> PassWrites | None:
        # S3-FIFO's moves only where it ordered; its FIFO ghosts (and their bound) after every pass.
        writes = self._fifo.take_pass_writes()
        if not self._fifo_ran:
            writes = None
        limit = max(self._ghost_limit, writes.ghost_limit if writes is not None else 0)
        self._ghost_limit = 0
        if writes is None:
            return PassWrites(ghost_limit=limit) if limit else None
        writes.ghost_limit = limit
        return writes

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
        self._load(catalog)
        # Rows and bytes from the queues' covering indexes (cheap); the class aggregate only for the orders
        # that read it.
        queue_sizes = catalog.fifo_queue_sizes(namespace_ids)
        rows, total = queue_sizes[0], queue_sizes[1]
        keep = max(0, total - limit_bytes)
        with self._lock:
            if namespace_ids is None and total > 0:
                # The tier's size in blocks (at its mean block size): what the shadows miniaturise.
                self.shadows.size(keep * rows // total)
            choice = self.shadows.choice
        self._ghost_limit = max(self._ghost_limit, ghost_limit(rows, total, keep))
        if len(self._offered) > 4_000_000:  # victims never executed (dry runs): forget, do not grow
            self._offered.clear()
        offered_classes = self._offered
        offered = 0
        ordered = self._ordered(catalog, choice, namespace_ids, protect_after, limit_bytes, queue_sizes)
        try:
            for cand, cls in ordered:
                if cls is not None and cand.block_id is not None:  # orphans and superseded leave no ghost
                    offered_classes[cand.block_id] = cls
                yield cand
                offered += cand.size
                if offered >= limit_bytes:
                    return
        finally:
            ordered.close()

    def _ordered(
        self,
        catalog: Catalog,
        choice: str,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
        queue_sizes: tuple[int, int, int, int],
    ) -> Generator[tuple[Candidate, int | None], None, None]:
        if choice == FIFO:
            self._fifo_ran = True
            yield from self._fifo.ordered(
                catalog,
                namespace_ids=namespace_ids,
                protect_after=protect_after,
                limit_bytes=limit_bytes,
                queue_sizes=queue_sizes,
            )
            return
        sizes: tuple[int, int, int] = (0, 0, 0)
        total = queue_sizes[1]  # every row is in one S3-FIFO queue: the bytes in scope
        if choice in (SHARES, TWOQ):
            sizes = catalog.class_bytes(namespace_ids, total)
        opened = [
            catalog.stream_candidates(namespace_ids, protect_after, block_class)
            for block_class in (BlockClass.ORPHAN, BlockClass.SUPERSEDED, BlockClass.FRESH, BlockClass.REUSED)
        ]
        orphans, superseded, fresh, reused = opened
        try:
            if choice == PREFIX:
                _beta, _extra, span = ghosts.load(catalog, policy=NAME)
                for cand, was_reused in prefix.order(orphans, superseded, fresh, reused, self.beta * span):
                    yield cand, None if was_reused is None else _class(cand)
                return
            state = self.shares if choice == SHARES else TWOQ_STATE
            assert choice in (SHARES, TWOQ)
            surplus = adaptive_core.surpluses(sizes, total, limit_bytes, state)
            split = _Split(reused)
            live = (fresh, split.of(adaptive_core.ONCE), split.of(adaptive_core.FREQUENT))
            yield from adaptive_core.order(orphans, superseded, live, surplus)
        finally:
            for stream in opened:
                stream.close()

    def evicted(self, catalog: Catalog, victims: Sequence[EvictedBlock]) -> None:
        offered = self._offered
        rows = []
        for v in victims:
            cls = offered.pop(getattr(v, "block_id", None), None)  # type: ignore[arg-type]
            if cls is not None:
                rows.append((v.key, v.last_access, cls))
        try:
            if rows:
                ghosts.remember_classes(catalog, NAME, rows)
            if not self._saved:  # the scores fed since `prepare`, once a pass
                ghosts.save_extra(catalog, NAME, self._state())
                self._saved = True
        except CatalogError as exc:
            metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="remember").inc()
            log.warning("adaptive: recording %d ghosts failed: %s", len(rows), exc)


def _class(cand: Candidate) -> int:
    return min(cand.hits, adaptive_core.FREQUENT)


class _Split:
    """The REUSED stream (LRU order) read once as two, ONCE (`hits = 1`) and FREQUENT (`hits >= 2`): rows of the
    class not asked for wait in memory until asked for.  (Two streams filtered on `hits` would each walk the
    whole reused index: +0.5 s for 100,000 victims of 1M rows.)"""

    def __init__(self, stream: Iterator[Candidate]) -> None:
        self._stream = stream
        self._held: tuple[deque[Candidate], deque[Candidate]] = (deque(), deque())

    def _next(self, cls: int) -> Candidate | None:
        held = self._held[cls - adaptive_core.ONCE]
        if held:
            return held.popleft()
        for cand in self._stream:
            got = _class(cand)
            if got == cls:
                return cand
            self._held[got - adaptive_core.ONCE].append(cand)
        return None

    def of(self, cls: int) -> Iterator[Candidate]:
        while (cand := self._next(cls)) is not None:
            yield cand
