"""S3-FIFO's sweep (kvfs.policy.s3fifo_core) on a hand-made pair of queues."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kvfs.policy.s3fifo_core import MAX_FREQ, small_target, sweep, touch


@dataclass(eq=False)
class B:
    name: str
    freq: int = 0
    last_access: float = 0.0
    main: bool = False


class Queues:
    def __init__(self, small: list[B], main: list[B]) -> None:
        for b in main:
            b.main = True
        self.q = (deque(small), deque(main))

    def size(self, main: bool) -> int:
        return len(self.q[main])

    def pop(self, main: bool) -> B:
        return self.q[main].popleft()

    def push(self, block: B, main: bool) -> None:
        block.main = main
        self.q[main].append(block)

    def put_back(self, blocks: list[B]) -> None:
        for b in reversed(blocks):
            self.q[b.main].appendleft(b)

    def names(self, main: bool) -> list[str]:
        return [b.name for b in self.q[main]]


def take(it, n: int) -> list[str]:
    out = []
    for b in it:
        out.append(b.name)
        if len(out) == n:
            break
    it.close()
    return out


def test_counter_saturates_at_two_bits() -> None:
    assert [touch(f) for f in range(5)] == [1, 2, 3, 3, 3]
    assert MAX_FREQ == 3
    assert small_target(1000) == 100 and small_target(5) == 1


def test_small_queue_promotes_used_blocks_and_offers_the_rest() -> None:
    s1, s2, s3 = B("s1"), B("s2", freq=2), B("s3")
    m1 = B("m1")
    q = Queues([s1, s2, s3], [m1])
    # Small holds 3 >= its target 2: s1 (unused) goes; s2 (used) moves to main with its counter cleared; then
    # small holds 1 < 2, so main's oldest, m1, goes.
    assert take(sweep(q, 2, now=10.0, skip=lambda b: False), 2) == ["s1", "m1"]
    assert q.names(False) == ["s3"] and q.names(True) == ["s2"] and s2.freq == 0


def test_main_is_a_clock_that_decays_the_counter_per_sweep() -> None:
    hot, cold = B("hot", freq=2), B("cold")
    q = Queues([], [hot, cold])
    # hot survives two sweeps past it (2 -> 1 -> 0), cold goes first, then hot once its counter ran out.
    assert take(sweep(q, 1, now=10.0, skip=lambda b: False), 1) == ["cold"]
    assert hot.freq == 1 and q.names(True) == ["hot"]
    assert take(sweep(q, 1, now=10.0, skip=lambda b: False), 1) == ["hot"]


def test_the_request_in_flight_is_set_aside_and_put_back_at_the_head() -> None:
    busy, old = B("busy", last_access=10.0), B("old", last_access=3.0)
    q = Queues([], [busy, old])
    assert take(sweep(q, 1, now=10.0, skip=lambda b: False), 1) == ["old"]
    assert q.names(True) == ["busy"]
    # Nothing else to offer: the sweep ends, busy still queued.
    assert take(sweep(q, 1, now=10.0, skip=lambda b: False), 5) == []
    assert q.names(True) == ["busy"]


def test_blocks_already_chosen_are_dropped_without_a_decision() -> None:
    gone, kept = B("gone", freq=3), B("kept")
    q = Queues([], [gone, kept])
    assert take(sweep(q, 1, now=10.0, skip=lambda b: b.name == "gone"), 1) == ["kept"]
    assert q.names(True) == [] and gone.freq == 3
