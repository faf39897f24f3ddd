"""The `prefix` policy replayed on an in-memory tier: the catalog replay's rules, without SQL.

The decisions are the policy's own code (`kvfs.policy.prefix.order` and `adapt`); this module only holds the
tier in memory, in the shape the catalog gives the policy: orphans (blocks whose parent was removed), superseded
leaves (never read, their parent got a newer child), and the live blocks by class (FRESH `hits = 0`, ONCE
`hits = 1`, FREQUENT `hits >= 2`; `prefix` reads the last two merged as one REUSED stream) each in LRU order
(oldest first, deeper chain position first among blocks of one request), ghosts of evicted blocks with their class, and the bookkeeping the catalog does (children of a
removed block become orphans, and theirs; a block used again is adopted back; a stored block supersedes its
older never-read childless siblings; `settle` before each pass).  It reproduces
`simulate_catalog_policy(..., policy="prefix")` block for block (tests/kvfs/test_replay_memory.py) in a
fraction of the time.  `ChainTier` is that tier one request at a time; the two-share order alone
(`SharesRule`, one of `adaptive`'s candidates) and `prefix` run on it here, `adaptive` (kvfs.replay.chooser) runs
one tier and its shadows, with S3-FIFO's queues kept by the tier when its rule has them (`Rule.fifo`).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from kvfs.policy import adaptive_core, prefix
from kvfs.replay.fifo import FifoQueues
from kvfs.replay.sim import SimResult, leading_hits

Progress = Callable[[int], None]


class _Block:
    # freq, main, qseq, queued: S3-FIFO's state (kvfs.replay.fifo), kept only for rules that may order by it.
    __slots__ = (
        "block",
        "chain_pos",
        "freq",
        "hits",
        "last_access",
        "main",
        "orphan",
        "parent",
        "qseq",
        "queued",
    )
    size = 1  # one block, one unit: capacity in blocks

    def __init__(self, block: int, last_access: float, chain_pos: int, parent: int | None) -> None:
        self.block = block
        self.parent = parent
        self.last_access = last_access
        self.chain_pos = chain_pos
        self.hits = 0
        self.orphan = False
        self.freq = 0
        self.main = False
        self.qseq = 0
        self.queued = False


def _older_than(segment: OrderedDict[int, _Block], now: float) -> Iterator[_Block]:
    # The planner never offers blocks used at `now` (the request just served); they are last in LRU order.
    for block in segment.values():
        if block.last_access >= now:
            return
        yield block


def _lru(segment: dict[int, _Block], now: float) -> list[_Block]:
    # The catalog's LRU order (oldest first, deeper chain position first), without the request just served.
    return sorted(
        (b for b in segment.values() if b.last_access < now), key=lambda b: (b.last_access, -b.chain_pos)
    )


class Rule(Protocol):
    """A chain policy's decisions on the in-memory tier: its state, settled before each pass, and its order."""

    revive: bool  # a block stored again while its ghost is remembered counts as reused
    horizon: float  # ghosts are kept for this many recency spans
    fifo: FifoQueues | None  # S3-FIFO's queues, kept by the tier when the rule may order by them

    def settle(self, returned: list[int], ghosts: list[int], blocks: int) -> None:
        """`returned`, `ghosts`: per class (FRESH, REUSED, FREQUENT) ghosts stored again since the last pass and
        ghosts left; `blocks`: blocks in the tier."""

    def order(
        self,
        orphans: list[_Block],
        superseded: list[_Block],
        live: tuple[Iterator[_Block], Iterator[_Block], Iterator[_Block]],
        sizes: tuple[int, int, int],
        total: int,
        need: int,
        span: float,
        now: float,
    ) -> Iterator[tuple[_Block, object]]:
        """Victims in order from the class streams (FRESH, REUSED, FREQUENT: each LRU-ordered, the request
        just served left out), their sizes (blocks of each class in the tier) and the tier's; yields (block, None) for
        orphans and superseded leaves, which leave no ghost.  The tier closes the iterator after the pass."""


class PrefixRule:
    revive = False
    horizon = prefix.HORIZON
    fifo = None

    def __init__(self) -> None:
        self.beta = prefix.BETA_INITIAL

    def settle(self, returned: list[int], ghosts: list[int], blocks: int) -> None:
        self.beta = prefix.adapt(
            returned[0], returned[1] + returned[2], ghosts[0], ghosts[1] + ghosts[2], self.beta
        )

    def order(
        self,
        orphans: list[_Block],
        superseded: list[_Block],
        live: tuple[Iterator[_Block], Iterator[_Block], Iterator[_Block]],
        sizes: tuple[int, int, int],
        total: int,
        need: int,
        span: float,
        now: float,
    ) -> Iterator[tuple[_Block, bool | None]]:
        # `prefix` reads one REUSED stream (hits > 0): the two reused classes merged in LRU order.
        reused = heapq.merge(live[1], live[2], key=_lru_key)
        return prefix.order(orphans, superseded, live[0], reused, self.beta * span)


class SharesRule:
    """The two-share order alone (`adaptive` before it chose among orders; one of its candidates now)."""

    revive = True
    horizon = adaptive_core.HORIZON
    fifo = None

    def __init__(self) -> None:
        self.state = adaptive_core.State()

    def settle(self, returned: list[int], ghosts: list[int], blocks: int) -> None:
        self.state = adaptive_core.adapt(self.state, returned, ghosts)

    def order(
        self,
        orphans: list[_Block],
        superseded: list[_Block],
        live: tuple[Iterator[_Block], Iterator[_Block], Iterator[_Block]],
        sizes: tuple[int, int, int],
        total: int,
        need: int,
        span: float,
        now: float,
    ) -> Iterator[tuple[_Block, int | None]]:
        surplus = adaptive_core.surpluses(sizes, total, need, self.state)
        return adaptive_core.order(orphans, superseded, live, surplus)


def _insert_lru(segment: OrderedDict[int, _Block], items: list[_Block]) -> None:
    """Add recent blocks to an LRU-ordered segment at their place (only its tail is reordered)."""
    items.sort(key=_lru_key)
    lowest = _lru_key(items[0])
    tail: list[_Block] = []
    while segment:
        last = next(reversed(segment.values()))
        if _lru_key(last) <= lowest:
            break
        segment.popitem()
        tail.append(last)
    tail.reverse()
    for block in heapq.merge(items, tail, key=_lru_key):
        segment[block.block] = block


def _lru_key(block: _Block) -> tuple[float, int]:
    return block.last_access, -block.chain_pos


def simulate_prefix(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    progress: Progress | None = None,
) -> SimResult:
    """Hit blocks of the `prefix` policy on `requests` at `capacity` blocks, evicting to `capacity - slack`."""
    return simulate_chains(requests, capacity, slack, PrefixRule(), progress=progress)


def simulate_shares(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    progress: Progress | None = None,
) -> SimResult:
    """Hit blocks of the two-share order alone (`kvfs.policy.adaptive_core`) at `capacity` blocks."""
    return simulate_chains(requests, capacity, slack, SharesRule(), progress=progress)


def simulate_chains(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int,
    rule: Rule,
    *,
    progress: Progress | None = None,
) -> SimResult:
    """The in-memory tier with the catalog's chain bookkeeping, ordered by `rule` at each pass."""
    tier = ChainTier(capacity, slack, rule)
    for req in requests:
        tier.serve(req)
        if progress is not None:
            progress(1)
    return tier.result


class ChainTier:
    """The in-memory tier, one request at a time (`serve`): what `simulate_chains` runs, and what `adaptive`'s
    real tier and its shadows are (kvfs.replay.chooser)."""

    def __init__(self, capacity: int, slack: int, rule: Rule) -> None:
        self.rule = rule
        self.capacity = capacity
        self.target = max(0, capacity - slack)
        self.fresh: OrderedDict[int, _Block] = OrderedDict()
        self.reused: OrderedDict[int, _Block] = OrderedDict()  # hits == 1
        self.frequent: OrderedDict[int, _Block] = OrderedDict()  # hits >= 2
        self.live = (self.fresh, self.reused, self.frequent)  # by class: min(hits, 2)
        self.orphans: dict[int, _Block] = {}
        self.superseded: dict[int, _Block] = {}
        self.blocks: dict[int, _Block] = {}
        self.children: defaultdict[int, set[int]] = defaultdict(set)  # parent -> blocks stored behind it
        # parent -> its children that the superseded rule could mark (never read, not orphan or superseded, no
        # present children): a branch visits only these, not every sibling (issue 22, item 4; same marks).
        self.leaves: defaultdict[int, set[int]] = defaultdict(set)
        self.ghosts: dict[int, tuple[float, int]] = {}  # block -> (last access when evicted, its class)
        # (last access, block): expiry order; stale entries skipped
        self.ghost_heap: list[tuple[float, int]] = []
        self.ghost_count = [0, 0, 0]
        self.returned = [0, 0, 0]
        self.restored: list[_Block] = []  # blocks stored since the last pass whose ghost was remembered
        self.served = 0
        self.result = SimResult()

    def serve(self, req: Sequence[int]) -> int:
        """Count `req`'s leading hits, store or touch its blocks, run a pass if over capacity; returns the hits."""
        blocks, fresh, reused, frequent, live = self.blocks, self.fresh, self.reused, self.frequent, self.live
        orphans, superseded, children, leaves = self.orphans, self.superseded, self.children, self.leaves
        ghosts, ghost_count, returned = self.ghosts, self.ghost_count, self.returned
        rule = self.rule
        fifo = rule.fifo
        self.served += 1
        now = float(self.served)
        hits = leading_hits(req, blocks)
        self.result.count(hits, len(req))
        # Deepest first, so that within one request the head ends up most recent (the catalog's order on
        # equal last access is chain_pos descending).
        branched: list[int] = []  # parents (stored before this request) that got a new child
        for pos in range(len(req) - 1, -1, -1):
            h = req[pos]
            block = blocks.get(h)
            if block is None:
                ghost = ghosts.pop(h, None)
                if ghost is not None:  # a re-store: counted at the next pass, as the catalog's settle does
                    ghost_count[ghost[1]] -= 1
                    returned[ghost[1]] += 1
                block = blocks[h] = _Block(h, now, pos, req[pos - 1] if pos else None)
                fresh[h] = block
                if fifo is not None:
                    fifo.stored(block)
                if ghost is not None and rule.revive:
                    self.restored.append(block)
                if pos:
                    parent = req[pos - 1]
                    children[parent].add(h)
                    branched.append(pos - 1)
                    leaves[parent].add(h)
                    above = blocks.get(parent)
                    if above is not None and above.parent is not None:
                        leaves[above.parent].discard(parent)
                if children.get(h) and pos:  # stored behind its own children (deepest first): not a leaf
                    leaves[req[pos - 1]].discard(h)
                continue
            block.last_access = now
            if fifo is not None:
                fifo.used(block)
            if not block.hits and block.parent is not None:
                leaves[block.parent].discard(h)
            block.hits += 1
            if h in superseded:  # read after all
                del superseded[h]
                reused[h] = block
            elif block.orphan:  # used again: its chain was sent whole
                block.orphan = False
                del orphans[h]
                live[min(block.hits, 2)][h] = block
            elif block.hits <= 2:  # up one class
                del live[block.hits - 1][h]
                live[block.hits][h] = block
            else:
                frequent.move_to_end(h)
        # As the catalog's apply_journal: a new block's older, never-read, childless siblings are superseded.
        for pos in branched:
            candidates = leaves.get(req[pos])
            if not candidates:
                continue
            for sibling in [c for c in candidates if blocks[c].last_access < now]:
                candidates.discard(sibling)
                superseded[sibling] = fresh.pop(sibling)
        if len(blocks) > self.capacity:
            self._pass(now)
        return hits

    def _pass(self, now: float) -> None:
        blocks, fresh, reused, live = self.blocks, self.fresh, self.reused, self.live
        orphans, superseded, children, leaves = self.orphans, self.superseded, self.children, self.leaves
        ghosts, ghost_heap, ghost_count = self.ghosts, self.ghost_heap, self.ghost_count
        rule = self.rule
        fifo = rule.fifo
        # settle(): as kvfs.catalog.ghosts does before the pass.
        oldest = min(
            min((seg[next(iter(seg))].last_access for seg in live if seg), default=now),
            min((b.last_access for b in orphans.values()), default=now),
            min((b.last_access for b in superseded.values()), default=now),
        )
        span = now - oldest
        rule.settle(self.returned, ghost_count, len(blocks))
        self.returned[:] = [0, 0, 0]
        if self.restored:
            # A re-store is a use (ARC's ghost hit goes to T2): hits 0 -> 1, into the reused LRU at its place.
            revived = []
            for block in self.restored:
                if block.hits == 0 and fresh.pop(block.block, None) is not None:
                    block.hits = 1
                    if block.parent is not None:
                        leaves[block.parent].discard(block.block)
                    revived.append(block)
            if revived:
                _insert_lru(reused, revived)
            self.restored.clear()
        cutoff = now - rule.horizon * span
        while ghost_heap and ghost_heap[0][0] < cutoff:
            last, h = heapq.heappop(ghost_heap)
            ghost = ghosts.get(h)
            if ghost is not None and ghost[0] == last:
                del ghosts[h]
                ghost_count[ghost[1]] -= 1
        need = len(blocks) - self.target
        victims: list[tuple[_Block, object]] = []
        ordered = rule.order(
            _lru(orphans, now),
            _lru(superseded, now),
            (_older_than(fresh, now), _older_than(reused, now), _older_than(self.frequent, now)),
            (len(fresh), len(reused), len(self.frequent)),
            len(blocks),
            need,
            span,
            now,
        )
        for block, live_class in ordered:
            victims.append((block, live_class))
            if len(victims) >= need:
                break
        close = getattr(ordered, "close", None)
        if close is not None:  # an order that set blocks aside puts them back
            close()
        for block, live_class in victims:
            h = block.block
            del blocks[h]
            if fifo is not None:
                fifo.removed(block)
            if block.parent is not None:  # a popular prefix's children would otherwise pile up, all checked
                up = block.parent
                siblings = children[up]
                siblings.discard(h)
                leaves[up].discard(h)
                above = blocks.get(up)
                if (
                    not siblings
                    and above is not None
                    and above.parent is not None
                    and not above.hits
                    and not above.orphan
                    and up not in superseded
                ):
                    leaves[above.parent].add(up)  # a leaf again
            if live_class is None:
                if orphans.pop(h, None) is None:
                    del superseded[h]
                continue  # an orphan or a superseded leaf leaves no ghost
            cls = min(block.hits, 2)
            del live[cls][h]
            old = ghosts.get(h)
            if old is not None:
                ghost_count[old[1]] -= 1
            ghosts[h] = (block.last_access, cls)
            ghost_count[cls] += 1
            heapq.heappush(ghost_heap, (block.last_access, h))
        # The catalog marks every present descendant of a removed block as an orphan.
        level = [block.block for block, _ in victims]
        while level:
            below = []
            for parent in level:
                for child in children.get(parent, ()):
                    kid = blocks.get(child)
                    if kid is not None and not kid.orphan:
                        kid.orphan = True
                        leaves[parent].discard(child)
                        orphans[child] = kid
                        if superseded.pop(child, None) is None:
                            del live[min(kid.hits, 2)][child]
                        below.append(child)
            level = below
        self.result.evicted += len(victims)
