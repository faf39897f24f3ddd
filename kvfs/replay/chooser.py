"""`adaptive` replayed in memory: the chain tier ordered by whichever candidate order its shadows find best.

`simulate_adaptive` runs, request by request, the real tier (`kvfs.replay.memory.ChainTier`) and one shadow
tier per candidate order (`CANDIDATES`), each sized `rate` times the tier and fed the request's sampled
blocks (`kvfs.policy.chooser.sampled`); the shadows' hits update the scores, and the real tier's next pass
orders by the current candidate.  Every tier runs `OrdersRule`: the state of every candidate order is kept
on every block and in the rule whichever order runs (the classes and ghosts of the two shares and of
`prefix`'s bonus, S3-FIFO's queues and counters), so a switch orders the same blocks at once by the new
order, with no warm-up.  A shadow is the same rule held to one candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from kvfs.policy import adaptive_core, chooser
from kvfs.replay.fifo import FifoQueues, fifo_order
from kvfs.replay.memory import ChainTier, PrefixRule, SharesRule, _Block
from kvfs.replay.sim import SimResult

Progress = Callable[[int], None]

SHARES, FIFO, TWOQ, PREFIX = "shares", "s3fifo", "2q", "prefix"
# The first orders until a shadow leads: the two-share order, best in most cells on its own.
CANDIDATES = (SHARES, FIFO, TWOQ, PREFIX)
# 2Q's order: the two-share order held at 2Q's probation share, no frequency boundary (kvfs.policy.twoq).
TWOQ_STATE = adaptive_core.State(0.1, 1.0)


class OrdersRule:
    """Every candidate order on one tier; `choice` names the one that orders the next pass.  `fixed`: held to
    `choice` (a shadow), so S3-FIFO's queues are kept only if that is the FIFO order (they are a third of a
    shadow's cost, and no other order reads them)."""

    revive = True  # a re-stored block counts as read once (the two shares' and 2Q's rule)
    horizon = adaptive_core.HORIZON

    def __init__(self, capacity: int, choice: str = CANDIDATES[0], *, fixed: bool = False) -> None:
        if choice not in CANDIDATES:
            raise ValueError(f"unknown order {choice!r} (one of {', '.join(CANDIDATES)})")
        self._choice = choice
        self.fixed = fixed
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
        if self.choice == SHARES:
            return self.shares.order(orphans, superseded, live, sizes, total, need, span, now)
        if self.choice == TWOQ:
            surplus = adaptive_core.surpluses(sizes, total, need, TWOQ_STATE)
            return adaptive_core.order(orphans, superseded, live, surplus)
        if self.choice == PREFIX:
            ordered = self.prefix.order(orphans, superseded, live, sizes, total, need, span, now)
            # `prefix` yields whether a victim was reused; the ghost store wants its class.
            return ((block, None if cls is None else min(block.hits, 2)) for block, cls in ordered)
        return self._fifo_order(orphans, superseded, now)

    def _fifo_order(
        self, orphans: list[_Block], superseded: list[_Block], now: float
    ) -> Iterator[tuple[_Block, int | None]]:
        assert self.fifo is not None
        return fifo_order(self.fifo, self.fifo.small_target, orphans, superseded, now)


def simulate_adaptive(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    progress: Progress | None = None,
    choices: list[str] | None = None,
) -> SimResult:
    """Hit blocks of `adaptive` at `capacity` blocks; `choices`, if given, gets the order used after each
    request."""
    rate = chooser.sample_rate(capacity)
    shadow_capacity = max(1, round(capacity * rate))
    shadow_slack = max(1, round(slack * rate)) if slack else 0
    real = ChainTier(capacity, slack, OrdersRule(capacity))
    shadows = [
        ChainTier(shadow_capacity, shadow_slack, OrdersRule(shadow_capacity, name, fixed=True))
        for name in CANDIDATES
    ]
    scores = chooser.Scores.start(len(CANDIDATES))
    real_rule = real.rule
    assert isinstance(real_rule, OrdersRule)
    for req in requests:
        part = req if rate >= 1.0 else [h for h in req if chooser.sampled(h, rate)]
        hits = [shadow.serve(part) for shadow in shadows]
        scores = chooser.update(scores, hits, len(req), capacity)
        real_rule.choice = CANDIDATES[scores.current]
        real.serve(req)
        if choices is not None:
            choices.append(real_rule.choice)
        if progress is not None:
            progress(1)
    return real.result
