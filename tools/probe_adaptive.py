"""`adaptive` variants measured against a replay-suite draw, without touching the shipped policy.

    python -m tools.probe_adaptive SUITE.json [--mooncake PATH] [--seeds 1,2] [--requests 4000]
                                   [--variant align-fifo|plain] [--after C]

SUITE.json is what `python -m tools.replay_suite --json` wrote for the same traces (same `--mooncake`,
`--seeds`, `--requests`): it gives each cell's other policies, capacity and slack.  Each cell's `adaptive` is
replayed in memory with the variant (`kvfs.replay.chooser`'s tier and shadows, the same rules as the suite),
and its ratio to the best other policy is set beside the shipped one; then both envelopes (cells below
0.995x, worst, geometric mean).  A cell where the variant cannot act keeps the suite's figure (printed as
such).

Variants:

* `plain`: the shipped `adaptive`, to check the probe reproduces the suite;
* `align-fifo`: while S3-FIFO orders and the shadows are exact (tiers up to `SHADOW_BLOCKS`), each pass
  first takes the tier's blocks that S3-FIFO's shadow does not hold, oldest first (deeper first on ties),
  then S3-FIFO's order.  S3-FIFO's main queue keeps what it kept (a counter outlives sweeps), so a switch to
  it over another order's blocks does not give its hits for thousands of requests; this moves the tier to
  S3-FIFO's contents (a pass evicts only what it must, so over many passes: the tier tracks the shadow).
  `--after C`: only once S3-FIFO has ordered for C tier capacities of requested blocks (docs/policy.md,
  "Five draws, and W-TinyLFU").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

from kvfs.policy.chooser import SHADOW_BLOCKS
from kvfs.replay import unique_blocks
from kvfs.replay.chooser import CANDIDATES, FIFO, OrdersRule, Shadows
from kvfs.replay.memory import ChainTier, _Block
from kvfs.replay.sim import SimResult
from tools.replay_suite import GOAL, envelope, geometric_mean, traces

VARIANTS = ("plain", "align-fifo")


class AlignedRule(OrdersRule):
    """`OrdersRule` whose passes, while S3-FIFO orders over exact shadows, first evict what its shadow
    lacks."""

    def __init__(self, capacity: int, shadows: Shadows, after: float = 0.0) -> None:
        super().__init__(capacity, shadows=shadows)
        self.tier: ChainTier | None = None
        # Align only once S3-FIFO has ordered for `after` tier capacities of requested blocks.
        self.after_blocks = after * capacity
        self.requested = 0  # blocks requested since S3-FIFO began to order (the caller counts)
        self._last = self.choice

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
        base = super().order(orphans, superseded, live, sizes, total, need, span, now)
        if self.choice == FIFO and self._last != FIFO:
            self.requested = 0
        self._last = self.choice
        shadows, tier = self.shadows, self.tier
        if self.choice != FIFO or shadows is None or tier is None or shadows.rate < 1.0:
            return base
        if self.requested < self.after_blocks:
            return base
        held = shadows.tiers[CANDIDATES.index(FIFO)].blocks
        lacking = sorted(
            (b for b in tier.blocks.values() if b.block not in held and b.last_access < now),
            key=lambda b: (b.last_access, -b.chain_pos),
        )
        return _first_then(lacking, base, tier)


def _first_then(
    first: list[_Block], base: Iterator[tuple[_Block, int | None]], tier: ChainTier
) -> Iterator[tuple[_Block, int | None]]:
    taken: set[int] = set()
    try:
        for block in first:
            taken.add(block.block)
            dead = block.block in tier.orphans or block.block in tier.superseded
            yield block, None if dead else min(block.hits, 2)
        for block, cls in base:
            if block.block not in taken:
                yield block, cls
    finally:
        close = getattr(base, "close", None)
        if close is not None:  # S3-FIFO's sweep puts back what it set aside
            close()


def simulate(
    requests: Sequence[Sequence[int]], capacity: int, slack: int, variant: str, *, after: float = 0.0
) -> SimResult:
    """`adaptive` with `variant` (see the module) at `capacity` blocks."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    shadows = Shadows()
    aligned = AlignedRule(capacity, shadows, after) if variant == "align-fifo" else None
    rule = aligned if aligned is not None else OrdersRule(capacity, shadows=shadows)
    real = ChainTier(capacity, slack, rule)
    if aligned is not None:
        aligned.tier = real
    for request in requests:
        shadows.feed(request)
        real.serve(request)
        if aligned is not None:
            aligned.requested += len(request)
    return real.result


def _envelope(ratios: list[float]) -> str:
    below, worst = sum(r < GOAL for r in ratios), min(ratios, default=1.0)
    return f"{below} below {GOAL}×, worst {worst:.3f}, geometric mean {geometric_mean(ratios):.5f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.probe_adaptive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("suite_json", help="what tools.replay_suite --json wrote for the same traces")
    parser.add_argument("--mooncake", default=None)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--variant", choices=VARIANTS, default="align-fifo")
    parser.add_argument(
        "--after",
        type=float,
        default=0.0,
        help="align-fifo: align only once S3-FIFO has ordered for this many tier capacities of requested "
        "blocks",
    )
    args = parser.parse_args(argv)
    try:
        with open(args.suite_json) as fh:
            cells = {(row["trace"], row["fraction"]): row for row in json.load(fh)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.suite_json}: not a replay suite's JSON ({exc})")
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = sorted({fraction for _, fraction in cells})
    shipped: list[float] = []
    probed: list[float] = []
    for name, requests in traces(args.mooncake, args.requests, seeds):
        unique = unique_blocks(requests)
        for fraction in fractions:
            row = cells.get((name, fraction))
            if row is None:
                parser.error(
                    f"{args.suite_json} has no cell {name} {fraction:.0%}: run the suite on these traces"
                )
            if (row["requests"], row["unique_blocks"]) != (len(requests), unique):
                parser.error(
                    f"{name}: {len(requests)} requests of {unique} unique blocks here, "
                    f"{row['requests']} of {row['unique_blocks']} in the suite"
                )
            # The suite's own capacity and slack for the cell, so both replays run the same tier.
            capacity, slack = row["capacity_blocks"], row["slack_blocks"]
            acts = args.variant == "plain" or capacity <= SHADOW_BLOCKS
            if acts:
                hit_ratio = simulate(requests, capacity, slack, args.variant, after=args.after).hit_ratio
            else:
                hit_ratio = row["policies"]["adaptive"]
            _, _, ratio = envelope({**row["policies"], "adaptive": hit_ratio}, "adaptive")
            shipped.append(row["vs_best_other"])
            probed.append(round(ratio, 4))
            note = "" if acts else " (sampled shadows: the variant does not act, the suite's figure)"
            print(
                f"{name} {fraction:.0%} ({capacity:,}): {row['vs_best_other']:.3f} -> {ratio:.3f}{note}",
                flush=True,
            )
    print(f"\nshipped: {_envelope(shipped)}\n{args.variant}: {_envelope(probed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
