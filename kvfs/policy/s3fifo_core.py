"""S3-FIFO's order (Yang et al., SOSP 2023) on the chain tier, apart from any storage: one of `adaptive`'s
candidate orders (kvfs.policy.chooser).

Every block is in one of two FIFO queues and carries a 2-bit counter:

* a new block enters the small queue (a share `SMALL_SHARE` of the tier), unless its key is one of the small
  queue's recent victims (the ghost FIFO, as many keys as the main queue may hold): then it enters main;
* a use raises the counter, up to `MAX_FREQ`;
* the sweep takes the small queue's oldest block while that queue holds at least its share: used since it
  came (counter > 0), it moves to main with its counter cleared; else it is a victim (and its key a ghost).
  Otherwise it takes main's oldest: counter > 0, it goes back to main's tail with one less (a CLOCK); else it
  is a victim.

Why it is a candidate: on `sysprompt` and Mooncake at 1–2% the counter is a frequency that decays by sweeps,
not by time (a block read three times survives three sweeps unread), which no class of `hits` expresses; on
`chat` at 1% its ghost regime (only small-queue victims, as many as main holds) keeps what 2Q's does not
(docs/policy.md).  The sweep only decides; `Queues` is the storage's (an in-memory deque pair in
`kvfs.replay.fifo`; on the catalog a queue column, a queue sequence number and the counter per block).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

SMALL_SHARE = 0.1  # the paper's small-queue share
MAX_FREQ = 3  # 2 bits


class Counted(Protocol):
    freq: int

    @property
    def last_access(self) -> float: ...


T = TypeVar("T", bound=Counted)


class Queues(Protocol[T]):
    """The two FIFO queues as the storage keeps them; blocks taken out by `pop` are out until pushed back."""

    def size(self, main: bool) -> int:
        """Blocks in the queue."""

    def pop(self, main: bool) -> T:
        """Take the queue's oldest block out."""

    def push(self, block: T, main: bool) -> None:
        """Put a block at the queue's tail (newest)."""

    def put_back(self, blocks: list[T]) -> None:
        """Return blocks the sweep set aside (the request in flight) to the heads of their queues, in order."""


def small_target(capacity: int) -> int:
    """Blocks the small queue may hold before its oldest go (at least one)."""
    return max(1, int(SMALL_SHARE * capacity))


def touch(freq: int) -> int:
    """The counter after a use."""
    return min(MAX_FREQ, freq + 1)


def sweep(queues: Queues[T], small: int, now: float, skip: Callable[[T], bool]) -> Iterator[T]:
    """Victims in S3-FIFO's order until the queues run dry; the caller takes as many as it needs, then closes the
    iterator (which puts back what was set aside).  `small`: the small queue's target (`small_target`);
    blocks used at `now` (the request in flight) are set aside, never offered; `skip(block)`: already chosen by
    an earlier stream (an orphan, a superseded leaf), dropped from the queue without a decision."""
    held: list[T] = []
    try:
        while True:
            in_small, in_main = queues.size(False), queues.size(True)
            if in_small and (in_small >= small or not in_main):
                block = queues.pop(False)
                if skip(block):
                    continue
                if block.freq > 0:  # used while on probation: promoted, counter cleared
                    block.freq = 0
                    queues.push(block, True)
                    continue
                if block.last_access >= now:
                    held.append(block)
                    continue
                yield block
            elif in_main:
                block = queues.pop(True)
                if skip(block):
                    continue
                if block.last_access >= now:
                    held.append(block)
                    continue
                if block.freq > 0:  # CLOCK: one more sweep for each use, up to MAX_FREQ
                    block.freq -= 1
                    queues.push(block, True)
                    continue
                yield block
            else:
                return
    finally:
        queues.put_back(held)
