"""`adaptive`'s miniature simulations (`Shadows`) and `adaptive` replayed in memory (`simulate_adaptive`).

`Shadows` is one shadow tier per candidate order (`CANDIDATES`), each an in-memory chain tier
(`kvfs.replay.memory.ChainTier`) sized `rate` times the tier and fed each request's sampled blocks
(`kvfs.policy.chooser.sampled`); the shadows' hits update the scores (`kvfs.policy.chooser.update`).  The
catalog policy (`kvfs.policy.adaptive`) feeds them the requests it regroups from the journal records the
catalog applies; `simulate_adaptive` feeds them each request of a trace.  Both size them at a pass from what
stays after it (the tier's blocks as far as the catalog knows them: it knows no capacity), and until the
first pass keep the requests to feed them then.

`simulate_adaptive` runs, request by request, the real tier ordered by `OrdersRule`: the state of every
candidate order is kept on every block and in the rule whichever order runs (the classes and ghosts of the
two shares and of `prefix`'s bonus, S3-FIFO's queues and counters), so a switch orders the same blocks at
once by the new order, with no warm-up; each pass orders by the shadows' current choice.  A shadow is the
same rule held to one candidate.  It reproduces `simulate_catalog_policy(..., policy="adaptive")` block for
block (tests/kvfs/test_replay_adaptive.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

from kvfs.policy import adaptive_core, chooser, s3fifo_core
from kvfs.policy.s3fifo import ghost_limit
from kvfs.replay.fifo import FifoQueues, fifo_order
from kvfs.replay.memory import ChainTier, PrefixRule, SharesRule, _Block
from kvfs.replay.sim import SimResult

Progress = Callable[[int], None]

SHARES, FIFO, TWOQ, PREFIX = "shares", "s3fifo", "2q", "prefix"
# The first orders until a shadow leads: the two-share order, best in most cells on its own.
CANDIDATES = (SHARES, FIFO, TWOQ, PREFIX)
# 2Q's order: the two-share order held at 2Q's probation share, no frequency boundary (kvfs.policy.twoq).
TWOQ_STATE = adaptive_core.State(0.1, 1.0)
# A shadow's slack, as a share of what it keeps (rounded): the replay's (kvfs.replay.DEFAULT_SLACK_FRACTION).
SHADOW_SLACK = 0.01
# Requests kept before the first pass sizes the shadows (at most this many blocks, the oldest dropped): the
# tier's size is known only then.
BACKLOG_BLOCKS = 4_000_000


class OrdersRule:
    """Every candidate order on one tier; `choice` names the one that orders the next pass.  `fixed`: held to
    `choice` (a shadow), so S3-FIFO's queues are kept only if that is the FIFO order (they are a third of a
    shadow's cost, and no other order reads them)."""

    revive = True  # a re-stored block counts as read once (the two shares' and 2Q's rule)
    horizon = adaptive_core.HORIZON

    def __init__(
        self,
        capacity: int,
        choice: str = CANDIDATES[0],
        *,
        fixed: bool = False,
        shadows: Shadows | None = None,
    ) -> None:
        if choice not in CANDIDATES:
            raise ValueError(f"unknown order {choice!r} (one of {', '.join(CANDIDATES)})")
        self._choice = choice
        self.fixed = fixed
        # The real tier's: sized and asked for the order at each pass.
        self.shadows = None if fixed else shadows
        # The two shares' and `prefix`'s own rules keep their state (the ghosts teach both, whichever order runs).
        self.shares = SharesRule()
        self.prefix = PrefixRule()
        self.fifo: FifoQueues | None = FifoQueues(capacity) if not fixed or choice == FIFO else None

    @property
    def choice(self) -> str:
        return self._choice

    @choice.setter
    def choice(self, name: str) -> None:
        if name not in CANDIDATES or (self.fixed and name != self._choice):
            raise ValueError(f"cannot order by {name!r} (held to {self._choice!r}: {self.fixed})")
        self._choice = name

    def settle(self, returned: list[int], ghosts: list[int], blocks: int) -> None:
        # Both adaptive states learn from every pass's ghosts, whichever order made them.
        self.shares.settle(returned, ghosts, blocks)
        self.prefix.settle(returned, ghosts, blocks)

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
        # As the catalog policy: the tier's size, the FIFO targets and bounds from what stays after the pass.
        keep = max(0, total - need)
        if self.shadows is not None:
            self.shadows.size(keep)
            self._choice = self.shadows.choice
        if self.fifo is not None:
            self.fifo.ghost_limit = ghost_limit(total, total, keep)
        if self.choice == SHARES:
            return self.shares.order(orphans, superseded, live, sizes, total, need, span, now)
        if self.choice == TWOQ:
            surplus = adaptive_core.surpluses(sizes, total, need, TWOQ_STATE)
            return adaptive_core.order(orphans, superseded, live, surplus)
        if self.choice == PREFIX:
            ordered = self.prefix.order(orphans, superseded, live, sizes, total, need, span, now)
            # `prefix` yields whether a victim was reused; the ghost store wants its class.
            return ((block, None if cls is None else min(block.hits, 2)) for block, cls in ordered)
        assert self.fifo is not None
        return fifo_order(self.fifo, s3fifo_core.small_target(keep), orphans, superseded, now)


class Shadows:
    """The candidates' shadow tiers and scores (see the module).  `scores`: where a restarted chooser starts
    (the catalog's state row); `blocks`: the tier's size if known (then the shadows exist from the start)."""

    def __init__(self, scores: chooser.Scores | None = None, blocks: int = 0) -> None:
        self.scores = scores if scores is not None else chooser.Scores.start(len(CANDIDATES))
        self.blocks = 0
        self.rate = 1.0
        self.tiers: list[ChainTier] = []
        self._backlog: deque[Sequence[int]] = deque()
        self._backlog_blocks = 0
        if blocks > 0:
            self.size(blocks)

    @property
    def choice(self) -> str:
        return CANDIDATES[self.scores.current]

    def feed(self, request: Sequence[int]) -> None:
        """One request's blocks in chain order (keys as ints; the sample reads their low 64 bits)."""
        if not self.tiers:
            self._backlog.append(request)
            self._backlog_blocks += len(request)
            while self._backlog_blocks > BACKLOG_BLOCKS:
                self._backlog_blocks -= len(self._backlog.popleft())
            return
        rate = self.rate
        part = request if rate >= 1.0 else [h for h in request if chooser.sampled(h, rate)]
        hits = [shadow.serve(part) for shadow in self.tiers]
        self.scores = chooser.update(self.scores, hits, len(request), self.blocks)

    def size(self, blocks: int) -> None:
        """The tier keeps about `blocks` after a pass: the shadows are built for that size and fed the requests
        kept so far, or built again (empty, the scores kept) if the tier is more than twice or less than half
        the size they were built for."""
        blocks = max(1, blocks)
        if self.tiers and self.blocks // 2 <= blocks <= 2 * self.blocks:
            return
        self.blocks = blocks
        self.rate = chooser.sample_rate(blocks)
        # Each shadow keeps after its passes what the tier keeps (in miniature), and evicts its share of slack.
        kept = max(1, round(blocks * self.rate))
        slack = round(kept * SHADOW_SLACK)
        capacity = kept + slack
        self.tiers = [
            ChainTier(capacity, slack, OrdersRule(capacity, name, fixed=True)) for name in CANDIDATES
        ]
        backlog = list(self._backlog)
        self._backlog.clear()
        self._backlog_blocks = 0
        for request in backlog:
            self.feed(request)


def simulate_adaptive(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    progress: Progress | None = None,
    choices: list[str] | None = None,
) -> SimResult:
    """Hit blocks of `adaptive` at `capacity` blocks; `choices`, if given, gets the order of the last pass
    after each request."""
    shadows = Shadows()
    rule = OrdersRule(capacity, shadows=shadows)
    real = ChainTier(capacity, slack, rule)
    for req in requests:
        shadows.feed(req)
        real.serve(req)
        if choices is not None:
            choices.append(rule.choice)
        if progress is not None:
            progress(1)
    return real.result
