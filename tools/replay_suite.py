"""The replay suite: every trace x capacity x every policy, Belady and FIFO; the envelope of the default.

    python -m tools.replay_suite [--mooncake PATH] [--requests 4000] [--seeds 1,2]
                                [--capacities 0.01,0.02,0.05,0.1,0.25,0.5] [--policies all] [--default adaptive]
                                [--json OUT]

Traces: the Mooncake trace (when `--mooncake` names it) and every `tools.tracegen` workload for each seed.
Per trace and capacity: Belady's hit ratio, the default's (and × Belady), the best other policy's, the
default's ratio to it (goal >= 0.995; below is marked `*`), LRU's (a default below LRU is marked `!`).  Then
the envelope: cells below 0.995 of the best other policy, the worst ratio, the geometric mean of the ratios,
cells where LRU is above the default, and the suite's wall time.  Same rules as `kvfs replay` (1% slack, the
request just served is never evicted); every policy replays in memory (`kvfs.replay.IN_MEMORY`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kvfs.replay import DEFAULT_SLACK_FRACTION, replay, resolve_policies, unique_blocks
from kvfs.trace import read_trace
from tools.tracegen import WORKLOADS, generate

GOAL = 0.995


def traces(mooncake: str | None, requests: int, seeds: Sequence[int]) -> list[tuple[str, list[list[int]]]]:
    """The suite's traces by name: the Mooncake trace if given, then every workload for each seed (also what
    tools.probe_adaptive replays against a suite's JSON)."""
    out: list[tuple[str, list[list[int]]]] = []
    if mooncake:
        out.append(("mooncake", [list(r.hash_ids) for r in read_trace(mooncake)]))
    for workload in WORKLOADS:
        for seed in seeds:
            trace = generate(workload, requests=requests, seed=seed)
            out.append((f"{workload}-{seed}", [list(r.hash_ids) for r in trace]))
    return out


def envelope(policies: dict[str, float], default: str) -> tuple[str, float, float]:
    """(best other policy, its hit ratio, the default's ratio to it: 1.0 when both are 0)."""
    others = {name: ratio for name, ratio in policies.items() if name != default}
    best = max(others, key=lambda name: (others[name], name))
    ratio = policies[default] / others[best] if others[best] else 1.0
    return best, others[best], ratio


def geometric_mean(ratios: Sequence[float]) -> float:
    """The geometric mean of the default's ratios to the best other policy (one figure for a whole draw: a
    cell's loss and another's gain weigh alike)."""
    logs = [math.log(max(ratio, 1e-9)) for ratio in ratios]
    return math.exp(sum(logs) / len(logs)) if logs else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.replay_suite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mooncake", default=None, help="path of the Mooncake trace (left out if not given)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--capacities", default="0.01,0.02,0.05,0.1,0.25,0.5")
    parser.add_argument("--policies", default="all", help="compared policies (`all`: every one)")
    parser.add_argument("--default", default="adaptive", help="the policy whose envelope is reported")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [float(c) for c in args.capacities.split(",")]
    policies = resolve_policies([args.default, *(p for p in args.policies.split(",") if p)])
    default = policies[0]
    if len(policies) < 2:
        parser.error("name at least one policy besides the default")
    rows = []
    started = time.monotonic()
    below = lru_above = 0
    worst = (float("inf"), "")
    print(
        f"| trace | capacity (blocks) | Belady | {default} (× Belady) | best other | {default} ÷ best other "
        "| LRU |\n|---|---|---|---|---|---|---|"
    )
    for name, requests in traces(args.mooncake, args.requests, seeds):
        unique = unique_blocks(requests)
        for fraction in fractions:
            capacity = max(1, int(unique * fraction))
            slack = max(1, int(capacity * DEFAULT_SLACK_FRACTION))
            result = replay(requests, capacity, policy=policies, slack=slack)
            belady = result.belady_hit_ratio
            mine = result.policies[default]
            best, best_ratio, ratio = envelope(result.policies, default)
            below += ratio < GOAL
            lru_worse = result.lru_hit_ratio > mine
            lru_above += lru_worse
            worst = min(worst, (ratio, f"{name} {fraction:.0%}"))
            vs_belady = mine / belady if belady else 0.0
            print(
                f"| {name} | {fraction:.0%} ({capacity:,}) | {belady:.3f} | {mine:.3f} ({vs_belady:.2f}×) | "
                f"{best} {best_ratio:.3f} | {ratio:.3f}{' *' if ratio < GOAL else ''} | "
                f"{result.lru_hit_ratio:.3f}{' !' if lru_worse else ''} |",
                flush=True,
            )
            rows.append(
                {
                    "trace": name,
                    "fraction": fraction,
                    "default": default,
                    "best_other": best,
                    "vs_best_other": round(ratio, 4),
                    **result.to_json(),
                }
            )
    elapsed = time.monotonic() - started
    print(
        f"\n{len(rows)} cells, policies {', '.join(policies)}: {default} below {GOAL}× the best other in {below} "
        f"(worst {worst[0]:.3f}, {worst[1]}); geometric mean of its ratios "
        f"{geometric_mean([row['vs_best_other'] for row in rows]):.5f}; "
        f"LRU above it in {lru_above}; {elapsed:.1f} s",
        file=sys.stderr,
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
