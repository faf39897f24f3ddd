"""How far an online policy could go: replays with partial knowledge of the future, as upper bounds.

Belady knows every block's next use.  These know less, and each stands for a class of online policies:

* `simulate_oracle_frequency`: keeps the blocks with the most *remaining* uses (ties: LRU) — the best that
  frequency counting (LFU, TinyLFU, hit counters in the catalog) could do with a perfect count;
* `simulate_oracle_dead_lru`: LRU that evicts blocks never used again first — the best that admission or
  dead-block prediction (probation, S3-FIFO's small queue, 2Q) could add to LRU with a perfect predictor.

`python -m kvfs.replay.oracles TRACE.jsonl --capacity 0.05` prints them next to Belady, LRU and FIFO (same
rules as `kvfs replay`: prefix hits, the request just served is never evicted, 1% slack).
"""

from __future__ import annotations

import argparse
import heapq
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Sequence

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


def main(argv: list[str] | None = None) -> int:
    from kvfs.replay import (
        DEFAULT_SLACK_FRACTION,
        parse_capacity,
        simulate_belady,
        simulate_fifo,
        simulate_lru,
        unique_blocks,
    )
    from kvfs.tracegen import read_trace

    parser = argparse.ArgumentParser(
        prog="python -m kvfs.replay.oracles", description=__doc__.split("\n\n")[0]
    )
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
        ("lru", simulate_lru),
        ("fifo", simulate_fifo),
    ):
        ratio = sim(requests, capacity, slack).hit_ratio
        print(f"  {name:<42} hit ratio {ratio:.4f}  {ratio / belady if belady else 0:.3f}x belady")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
