"""`kvfs replay` speed: the fast replay next to the catalog replay (what `kvfs replay` ran before), same run.

    python -m tools.bench.replay [--trace PATH] [--capacity 0.05] [--runs 5] [--baseline-runs 1]

Both compute the same table (the default policy, LRU, Belady and FIFO on one trace and capacity): the fast one
replays `prefix` on the in-memory tier and LRU by its reference simulator; the baseline replays both through
the evictor's planner on a scratch SQLite catalog (`through_catalog=True`).  Their hit ratios must agree
exactly (checked).  Wall time of `replay()` on the parsed trace, median of the runs, and the ratio.
Without `--trace`: the shared Mooncake trace if present, else a generated `mixed` trace of 4,000 requests.
Goal: >= 10x, and the shared trace in <= 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from kvfs.replay import parse_capacity, replay, unique_blocks
from kvfs.trace import read_trace
from tools.tracegen import generate

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "mooncake_synthetic_trace.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--trace", default=None)
    parser.add_argument("--capacity", default="0.05")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=1)
    args = parser.parse_args(argv)
    path = Path(args.trace) if args.trace else SHARED
    if path.exists():
        name = path.name
        requests = [list(r.hash_ids) for r in read_trace(path)]
    else:
        name = "tracegen mixed, 4000 requests, seed 1"
        requests = [list(r.hash_ids) for r in generate("mixed", requests=4000, seed=1)]
    capacity = parse_capacity(args.capacity, unique_blocks(requests))
    print(f"{name}: {len(requests):,} requests, capacity {capacity:,} blocks", flush=True)

    def timed(through_catalog: bool) -> tuple[float, tuple[float, float]]:
        t0 = time.perf_counter()
        result = replay(requests, capacity, through_catalog=through_catalog)
        return time.perf_counter() - t0, (result.hit_ratio, result.lru_hit_ratio)

    fast = [timed(False) for _ in range(args.runs)]
    slow = [timed(True) for _ in range(args.baseline_runs)]
    if {r for _, r in fast} != {r for _, r in slow}:
        print(f"MISMATCH: fast {fast[0][1]} vs catalog {slow[0][1]}", file=sys.stderr)
        return 1
    fast_s = statistics.median(t for t, _ in fast)
    slow_s = statistics.median(t for t, _ in slow)
    print(
        f"  kvfs replay (fast: prefix in memory, LRU simulator)   {fast_s:7.2f} s  (runs {[round(t, 2) for t, _ in fast]})"
    )
    print(
        f"  baseline: the catalog replay of both (before)          {slow_s:7.2f} s  (runs {[round(t, 2) for t, _ in slow]})"
    )
    print(f"  RATIO catalog/fast {slow_s / fast_s:.1f}x (goal >= 10x); same hit ratios {fast[0][1]}")
    return 0 if slow_s / fast_s >= 10 and fast_s <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
