"""S3-FIFO's queues on the in-memory chain tier (`kvfs.policy.s3fifo_core.Queues`).

Kept for every block of a tier whose rule may order by S3-FIFO (`adaptive`), whatever order runs: a new block
enters the small queue, or main if its key is a recent small-queue victim; a use raises its counter; a
removed block leaves its queue (and, from the small queue, leaves its key in the ghost FIFO).  Entries are
removed lazily: a block carries the sequence number of its one valid entry (`qseq`) and whether it is queued
(`queued`); stale entries are skipped when they reach a queue's head.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from kvfs.policy import s3fifo_core


class Queued(Protocol):
    block: int
    hits: int
    freq: int
    main: bool
    qseq: int
    queued: bool

    @property
    def last_access(self) -> float: ...


class FifoQueues:
    def __init__(self, capacity: int) -> None:
        self.small_target = s3fifo_core.small_target(capacity)
        self.ghost_limit = max(1, capacity - self.small_target)  # as many as the main queue may hold
        self._queues: tuple[deque[tuple[int, Queued]], deque[tuple[int, Queued]]] = (deque(), deque())
        self._sizes = [0, 0]
        self.ghosts: OrderedDict[int, None] = OrderedDict()  # keys of small-queue victims, oldest first

    def size(self, main: bool) -> int:
        return self._sizes[main]

    def push(self, block: Queued, main: bool, *, head: bool = False) -> None:
        block.main = main
        block.qseq += 1
        block.queued = True
        queue = self._queues[main]
        (queue.appendleft if head else queue.append)((block.qseq, block))
        self._sizes[main] += 1

    def pop(self, main: bool) -> Queued:
        queue = self._queues[main]
        while True:
            seq, block = queue.popleft()
            if block.queued and block.qseq == seq:
                self._leave(block)
                return block

    def put_back(self, blocks: list[Queued]) -> None:
        for block in reversed(blocks):
            self.push(block, block.main, head=True)

    def stored(self, block: Queued) -> None:
        """A new block: main if its key was a recent small-queue victim, else small."""
        returned = block.block in self.ghosts
        if returned:
            del self.ghosts[block.block]
        self.push(block, returned)

    def used(self, block: Queued) -> None:
        block.freq = s3fifo_core.touch(block.freq)

    def removed(self, block: Queued) -> None:
        """A block left the tier (whatever order chose it)."""
        self._leave(block)
        if not block.main:
            self.ghosts[block.block] = None
            while len(self.ghosts) > self.ghost_limit:
                self.ghosts.popitem(last=False)

    def _leave(self, block: Queued) -> None:
        if block.queued:
            block.queued = False
            self._sizes[block.main] -= 1


B = TypeVar("B", bound=Queued)


def fifo_order(
    fifo: FifoQueues, small: int, orphans: Sequence[B], superseded: Sequence[B], now: float
) -> Iterator[tuple[B, int | None]]:
    """S3-FIFO's order on the chain tier, as every chain order: dead blocks first (orphans, then superseded
    leaves, each oldest first; yielded with class None: they leave no class ghost), then the sweep with small
    queue target `small` over the rest (yielded with the block's class, min(hits, 2)).  Close the iterator after
    the pass: the sweep puts back what it set aside."""
    taken: set[int] = set()
    for block in orphans:
        taken.add(block.block)
        yield block, None
    for block in superseded:
        taken.add(block.block)
        yield block, None
    sweep = s3fifo_core.sweep(fifo, small, now, lambda b: b.block in taken)
    try:
        for block in sweep:
            yield block, min(block.hits, 2)
    finally:
        sweep.close()
