"""`kvfs replay TRACE.jsonl --capacity 0.05`: the hit ratio of policies on a trace, against baselines.

Each policy runs through its own ordering code (`kvfs.replay.simulate_policy`: in memory where that is exact,
else the evictor's planner on a scratch SQLite catalog); Belady (farthest next use), LRU and FIFO are replayed
on the same trace, capacity and eviction slack.  A progress bar on stderr when it is a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvfs.cli.output import emit_json, table


@click.command("replay")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--capacity",
    required=True,
    metavar="FRACTION_OR_BLOCKS",
    help="Tier size: a fraction of the trace's unique blocks (0.05 or 5%) or a number of blocks (2000).",
)
@click.option(
    "--policy", default=None, metavar="NAME", help="Eviction policy [default: the evictor's default]."
)
@click.option(
    "--policies",
    default=None,
    metavar="A,B,C",
    help="Several policies compared in one run (one table row each); the first is the JSON's `policy`; "
    "`all`: every policy, the replay-only references (arc, wtinylfu) included.",
)
@click.option(
    "--through-catalog",
    is_flag=True,
    help="Replay every policy through the evictor's planner on a scratch catalog (slow; the fast paths "
    "give the same hits).",
)
@click.option(
    "--slack",
    type=click.IntRange(min=0),
    default=None,
    metavar="BLOCKS",
    help="Each pass evicts down to capacity minus this many blocks [default: 1% of capacity, at least 1].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay(
    trace: Path,
    capacity: str,
    policy: str | None,
    policies: str | None,
    through_catalog: bool,
    slack: int | None,
    as_json: bool,
) -> None:
    """Replay a Mooncake-format TRACE (one JSON request a line, `hash_ids` = prefix blocks).

    A request hits the leading run of its blocks that are cached; then all its blocks are stored or touched.
    Reports the hit ratio (hit blocks / requested blocks) of the policy, Belady, LRU and FIFO.
    """
    from kvfs.policy import UnknownPolicyError
    from kvfs.replay import REPLAY_ONLY, parse_capacity, replay_steps, resolve_policies, unique_blocks
    from kvfs.replay import replay as run_replay
    from kvfs.trace import read_trace

    if policy is not None and policies is not None:
        raise click.UsageError("give --policy or --policies, not both")
    wanted = [p.strip() for p in policies.split(",") if p.strip()] if policies is not None else [policy]
    if not wanted:
        raise click.BadParameter("no policy named", param_hint="'--policies'")
    # An unknown name fails here, before the replay starts.
    try:
        names = resolve_policies(wanted)
    except UnknownPolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="'--policy'/'--policies'") from None
    if through_catalog and any(n in REPLAY_ONLY for n in names):
        raise click.UsageError(f"--through-catalog: {', '.join(REPLAY_ONLY)} has no catalog version")
    requests = [req.hash_ids for req in read_trace(trace)]
    if not requests:
        raise click.ClickException(f"{trace}: no requests")
    if any(h < 0 for req in requests for h in req):
        raise click.ClickException(f"{trace}: hash_ids must not be negative")
    blocks = parse_capacity(capacity, unique_blocks(requests))
    if not as_json and sys.stderr.isatty():
        length = len(requests) * replay_steps(names)
        with click.progressbar(length=length, label="replaying", file=sys.stderr) as bar:
            result = run_replay(
                requests,
                blocks,
                policy=names,
                slack=slack,
                through_catalog=through_catalog,
                progress=bar.update,
            )
    else:
        result = run_replay(requests, blocks, policy=names, slack=slack, through_catalog=through_catalog)
    if as_json:
        emit_json(result.to_json())
        return
    belady = result.belady_hit_ratio
    mine = [
        (f"{name} ({'this policy' if len(names) == 1 else 'policy'})", f"{ratio:.4f}", _ratio(ratio, belady))
        for name, ratio in result.policies.items()
    ]
    rows = [
        *mine,
        ("belady (offline optimum)", f"{result.belady_hit_ratio:.4f}", "1.000"),
        *(
            []
            if "lru" in result.policies  # already a row
            else [
                ("lru", f"{result.lru_hit_ratio:.4f}", _ratio(result.lru_hit_ratio, result.belady_hit_ratio))
            ]
        ),
        ("fifo", f"{result.fifo_hit_ratio:.4f}", _ratio(result.fifo_hit_ratio, result.belady_hit_ratio)),
    ]
    click.echo(
        f"{trace.name}: {result.requests} requests, {result.total_blocks} blocks requested, "
        f"{result.unique_blocks} unique; capacity {result.capacity_blocks} blocks "
        f"({result.capacity_blocks / result.unique_blocks:.1%}), slack {result.slack_blocks}"
    )
    click.echo(table(("policy", "hit ratio", "x belady"), rows, right=(1, 2)))
    click.echo(f"replayed in {result.duration_s:.2f} s")


def _ratio(value: float, belady: float) -> str:
    return f"{value / belady:.3f}" if belady else "-"
