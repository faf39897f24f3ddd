"""The replay suite: every trace x capacity x {policies, Belady, LRU, FIFO}, as the table in docs/policy.md.

    python -m tools.replay_suite [--mooncake PATH] [--requests 4000] [--seeds 1,2] [--capacities 0.02,0.05,0.1,0.25]
                                [--policies prefix] [--json OUT]

Traces: the Mooncake trace (when `--mooncake` names it) and every `tools.tracegen` workload for each seed.
Each cell is the prefix-hit ratio and, in brackets, its ratio to Belady's; a policy cell below LRU's is
marked with `!`.  Same rules as `kvfs replay` (1% slack, the request just served is never evicted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kvfs.replay import DEFAULT_SLACK_FRACTION, replay, unique_blocks
from kvfs.trace import read_trace
from tools.tracegen import WORKLOADS, generate


def _traces(mooncake: str | None, requests: int, seeds: Sequence[int]) -> list[tuple[str, list[list[int]]]]:
    out: list[tuple[str, list[list[int]]]] = []
    if mooncake:
        out.append(("mooncake", [list(r.hash_ids) for r in read_trace(mooncake)]))
    for workload in WORKLOADS:
        for seed in seeds:
            trace = generate(workload, requests=requests, seed=seed)
            out.append((f"{workload}-{seed}", [list(r.hash_ids) for r in trace]))
    return out


def _cell(value: float, belady: float, *, mark: bool = False) -> str:
    ratio = value / belady if belady else 0.0
    return f"{value:.3f} ({ratio:.2f}×){' !' if mark else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.replay_suite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mooncake", default=None, help="path of the Mooncake trace (left out if not given)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--capacities", default="0.02,0.05,0.1,0.25")
    parser.add_argument("--policies", default="prefix")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [float(c) for c in args.capacities.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    rows = []
    started = time.monotonic()
    worse = 0
    print(
        f"| trace | capacity (blocks) | Belady | {' | '.join(policies)} | LRU | FIFO |\n"
        f"|---|---|---|{'---|' * len(policies)}---|---|"
    )
    for name, requests in _traces(args.mooncake, args.requests, seeds):
        unique = unique_blocks(requests)
        for fraction in fractions:
            capacity = max(1, int(unique * fraction))
            slack = max(1, int(capacity * DEFAULT_SLACK_FRACTION))
            result = replay(requests, capacity, policy=policies, slack=slack)
            belady = result.belady_hit_ratio

            cells = []
            for policy in policies:
                below = result.policies[policy] < result.lru_hit_ratio
                worse += below
                cells.append(_cell(result.policies[policy], belady, mark=below))
            print(
                f"| {name} | {fraction:.0%} ({capacity:,}) | {belady:.3f} | {' | '.join(cells)} | "
                f"{_cell(result.lru_hit_ratio, belady)} | {_cell(result.fifo_hit_ratio, belady)} |",
                flush=True,
            )
            rows.append({"trace": name, "fraction": fraction, **result.to_json()})
    print(
        f"\n{len(rows)} points, {worse} policy cells below LRU; {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
