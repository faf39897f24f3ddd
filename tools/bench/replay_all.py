"""`kvfs replay --policies all` speed: every policy, Belady and FIFO over a 10,000-request trace (goal < 20 s).

    python -m tools.bench.replay_all [--workload mixed] [--requests 10000] [--capacity 0.05] [--runs 3]
                                     [--baseline-requests 1000]

The figure: wall time of `replay(requests, capacity, policy=["all"])` (every policy in memory), median of the
runs.  Baseline in the same run: `2q` and `slru` through the evictor's planner on a scratch catalog (how they
replayed before) on the first `--baseline-requests` requests, next to the in-memory replay of the same two on
the same requests (hit ratios checked equal); per-request cost and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from kvfs.replay import parse_capacity, replay, unique_blocks
from tools.tracegen import generate

GOAL_S = 20.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.replay_all", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workload", default="mixed")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--capacity", default="0.05")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-requests", type=int, default=1000)
    args = parser.parse_args(argv)
    requests = [list(r.hash_ids) for r in generate(args.workload, requests=args.requests, seed=1)]
    capacity = parse_capacity(args.capacity, unique_blocks(requests))
    print(f"{args.workload}: {len(requests):,} requests, capacity {capacity:,} blocks", flush=True)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = replay(requests, capacity, policy=["all"])
        times.append(time.perf_counter() - t0)
    all_s = statistics.median(times)
    print(
        f"  every policy ({', '.join(result.policies)}) + Belady + FIFO: {all_s:.2f} s (runs {[round(t, 2) for t in times]})"
    )

    head = requests[: args.baseline_requests]
    cap = parse_capacity(args.capacity, unique_blocks(head))
    t0 = time.perf_counter()
    fast = replay(head, cap, policy=["2q", "slru"])
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = replay(head, cap, policy=["2q", "slru"], through_catalog=True)
    slow_s = time.perf_counter() - t0
    if fast.policies != slow.policies:
        print(f"MISMATCH: in memory {fast.policies} vs catalog {slow.policies}", file=sys.stderr)
        return 1
    n = len(head)
    print(
        f"  baseline, first {n:,} requests, 2q+slru (+LRU, Belady, FIFO): catalog {slow_s:.2f} s "
        f"({slow_s / n * 1e3:.2f} ms/request), in memory {fast_s:.2f} s; RATIO {slow_s / fast_s:.1f}x, same hits"
    )
    print(
        f"  goal: every policy over {len(requests):,} requests < {GOAL_S:.0f} s: {'met' if all_s < GOAL_S else 'NOT met'}"
    )
    return 0 if all_s < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
