"""The `s3fifo` policy replayed on the in-memory chain tier: the catalog replay's rules, without SQL.

`ChainTier` (kvfs.replay.memory) keeps the catalog's chain bookkeeping (orphans, superseded leaves) and, for a
rule with queues, S3-FIFO's state (`FifoQueues`: a store enters small, or main if its key is a FIFO ghost; a use
raises the counter; a block removed from the small queue leaves a ghost).  `S3FifoRule` orders each pass as
`kvfs.policy.s3fifo` does on the catalog: orphans, superseded leaves, then the sweep, with the small queue's
target and the ghost bound taken from what stays after the pass (`total - need`), as the catalog policy takes
them from the bytes that stay.  It reproduces `simulate_catalog_policy(..., policy="s3fifo")` block for block
(tests/kvfs/test_replay_s3fifo.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from kvfs.policy import s3fifo_core
from kvfs.policy.s3fifo import ghost_limit
from kvfs.replay.fifo import FifoQueues, fifo_order
from kvfs.replay.memory import ChainTier, _Block
from kvfs.replay.sim import SimResult

Progress = Callable[[int], None]


class S3FifoRule:
    revive = False  # S3-FIFO's own ghosts decide where a re-store goes; `hits` stays what was read
    horizon = 1.0  # the tier's class ghosts are not read by this order
    fifo: FifoQueues

    def __init__(self, capacity: int) -> None:
        self.fifo = FifoQueues(capacity)

    def settle(self, returned: list[int], ghosts: list[int], blocks: int) -> None:
        """Nothing learned: the queues are the state."""

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
        keep = max(0, total - need)
        self.fifo.ghost_limit = ghost_limit(total, total, keep)
        return fifo_order(self.fifo, s3fifo_core.small_target(keep), orphans, superseded, now)


def simulate_s3fifo_chains(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    """Hit blocks of the `s3fifo` policy on `requests` at `capacity` blocks, evicting to `capacity - slack`."""
    tier = ChainTier(capacity, slack, S3FifoRule(capacity))
    for req in requests:
        tier.serve(req)
        if progress is not None:
            progress(1)
    return tier.result
