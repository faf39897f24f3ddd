"""How far an online policy could go: replays with partial knowledge of the future, as upper bounds.

Belady knows every block's next use.  These know less, and each stands for a class of online policies:

* `simulate_oracle_frequency`: keeps the blocks with the most *remaining* uses (ties: LRU) — the best that
  frequency counting (LFU, TinyLFU, hit counters in the catalog) could do with a perfect count;
* `simulate_oracle_dead_lru`: LRU that evicts blocks never used again first — the best that admission or
  dead-block prediction (probation, S3-FIFO's small queue, 2Q) could add to LRU with a perfect predictor;
* `simulate_oracle_stable`: a stable set chosen with hindsight — the `share` x capacity blocks requested most
  often over the whole trace are never evicted once stored, the rest of the tier is LRU — what keeping a
  stable part of the working set resident (LIP/BIP/DIP insertion, RRIP's distant insertion, frequency
  segments) could reach if it picked that part perfectly.

`python -m tools.oracles TRACE.jsonl --capacity 0.05` prints them next to Belady, LRU and FIFO (same
rules as `kvfs replay`: prefix hits, the request just served is never evicted, 1% slack).
"""

from __future__ import annotations

import argparse
import heapq
from bisect import bisect_right
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Container, Sequence
from functools import partial

from kvfs.replay.sim import SimResult, leading_hits

Request = Sequence[int]
# (block, request index, chain position, future uses left, is used again) -> eviction key, smallest first
KeyFn = Callable[[int, int, int, int, bool], tuple[float, ...]]


def _uses(requests: Sequence[Request]) -> dict[int, list[int]]:
    uses: dict[int, list[int]] = defaultdict(list)
    for i, req in enumerate(requests):
        for h in req:
            if not uses[h] or uses[h][-1] != i:
                uses[h].append(i)
    return uses


def _simulate(requests: Sequence[Request], capacity: int, slack: int, key: KeyFn) -> SimResult:
    uses = _uses(requests)
    cached: dict[int, tuple[int, int]] = {}  # block -> (last use, chain position)
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, cached), len(req))
        for pos, h in enumerate(req):
            cached[h] = (i, pos)
        if len(cached) <= capacity:
            continue
        excess = len(cached) - max(0, capacity - slack)
        scored = []
        for h, (last, pos) in cached.items():
            if last == i:
                continue
            left = len(uses[h]) - bisect_right(uses[h], i)
            scored.append((key(h, last, pos, left, left > 0), h))
        for _, h in heapq.nsmallest(excess, scored):
            del cached[h]
            result.evicted += 1
    return result


def simulate_oracle_frequency(requests: Sequence[Request], capacity: int, slack: int = 0) -> SimResult:
    return _simulate(requests, capacity, slack, lambda h, last, pos, left, again: (left, last, -pos))


def simulate_oracle_dead_lru(requests: Sequence[Request], capacity: int, slack: int = 0) -> SimResult:
    return _simulate(requests, capacity, slack, lambda h, last, pos, left, again: (again, last, -pos))


class _Either:
    """Membership in either of two containers, without building their union."""

    __slots__ = ("a", "b")

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, item: object) -> bool:
        return item in self.a or item in self.b


def simulate_oracle_stable(
    requests: Sequence[Request], capacity: int, slack: int = 0, *, share: float = 0.5
) -> SimResult:
    """The `share * capacity` most requested blocks of the trace (ties: first seen first) stay once stored;
    the other blocks share what is left by LRU (deeper chain position first, as `simulate_lru`).  Only when
    nothing else can go (the rest is the current request) does a stable block go, least recently used first,
    so the tier never holds more than the other simulators' would."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be within [0, 1]: {share}")
    counts = Counter(h for req in requests for h in dict.fromkeys(req))
    stable = {h for h, _ in counts.most_common(int(share * capacity))}
    # Cached blocks by recency (block -> request index of last use, oldest first): the others, the stable ones.
    others: OrderedDict[int, int] = OrderedDict()
    kept: OrderedDict[int, int] = OrderedDict()
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, _Either(others, kept)), len(req))
        for h in reversed(req):  # the head ends up most recent, the tail oldest
            segment = kept if h in stable else others
            segment[h] = i
            segment.move_to_end(h)
        if len(others) + len(kept) > capacity:
            target = max(0, capacity - slack)
            for segment in (others, kept):
                while len(others) + len(kept) > target and segment:
                    h, used = next(iter(segment.items()))
                    if used == i:
                        break  # only the current request is left in this segment
                    del segment[h]
                    result.evicted += 1
    return result


def main(argv: list[str] | None = None) -> int:
    from kvfs.replay import (
        DEFAULT_SLACK_FRACTION,
        parse_capacity,
        simulate_belady,
        simulate_fifo,
        simulate_lru,
        unique_blocks,
    )
    from kvfs.trace import read_trace

    parser = argparse.ArgumentParser(prog="python -m tools.oracles", description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--capacity", required=True, help="fraction of unique blocks (0.05, 5%%) or blocks")
    args = parser.parse_args(argv)
    requests = [r.hash_ids for r in read_trace(args.trace)]
    capacity = parse_capacity(args.capacity, unique_blocks(requests))
    slack = max(1, int(capacity * DEFAULT_SLACK_FRACTION))
    belady = simulate_belady(requests, capacity, slack).hit_ratio
    print(f"{args.trace}: capacity {capacity} blocks, slack {slack}")
    for name, sim in (
        ("belady (next use known)", simulate_belady),
        ("oracle frequency (remaining uses known)", simulate_oracle_frequency),
        ("oracle dead-block LRU (reuse known)", simulate_oracle_dead_lru),
        ("oracle stable 50% + LRU (top blocks known)", simulate_oracle_stable),
        ("oracle stable 90% + LRU (top blocks known)", partial(simulate_oracle_stable, share=0.9)),
        ("lru", simulate_lru),
        ("fifo", simulate_fifo),
    ):
        ratio = sim(requests, capacity, slack).hit_ratio
        print(f"  {name:<44} hit ratio {ratio:.4f}  {ratio / belady if belady else 0:.3f}x belady")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
