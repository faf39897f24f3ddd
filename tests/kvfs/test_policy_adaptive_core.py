"""The adaptive default's decisions (kvfs.policy.adaptive_core) and its in-memory replay."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvfs.policy.adaptive_core import SHARE_INITIAL, adapt, fresh_surplus, order
from kvfs.replay import replay, simulate_lru, unique_blocks
from kvfs.replay.memory import simulate_adaptive
from tools.tracegen import WORKLOADS, generate


@dataclass
class B:
    name: str
    last_access: float
    chain_pos: int = 0
    size: int = 1


def names(items) -> list[tuple[str, bool | None]]:
    return [(b.name, r) for b, r in items]


def test_order_dead_blocks_then_fresh_surplus_then_lru() -> None:
    orphans = [B("o", 9)]
    superseded = [B("s", 8)]
    fresh = [B("f1", 1), B("f2", 5), B("f3", 7)]
    reused = [B("r1", 2), B("r2", 6)]
    # Surplus 1: the oldest fresh block first, then fresh and reused merged by last access.
    assert names(order(orphans, superseded, fresh, reused, 1)) == [
        ("o", None),
        ("s", None),
        ("f1", False),
        ("r1", True),
        ("f2", False),
        ("r2", True),
        ("f3", False),
    ]
    # Surplus 2 takes f2 before the older reused r1; no surplus is plain LRU.
    assert [n for n, _ in names(order([], [], fresh, reused, 2))][:3] == ["f1", "f2", "r1"]
    assert [n for n, _ in names(order([], [], fresh, reused, 0))] == ["f1", "r1", "f2", "r2", "f3"]


def test_order_ties_take_the_deeper_block_first() -> None:
    fresh = [B("f-head", 3, chain_pos=0)]
    reused = [B("r-tail", 3, chain_pos=4)]
    assert [n for n, _ in names(order([], [], fresh, reused, 0))] == ["r-tail", "f-head"]
    assert [n for n, _ in names(order([], [], [B("f-tail", 3, 4)], [B("r-head", 3, 0)], 0))] == [
        "f-tail",
        "r-head",
    ]


def test_adapt_moves_like_arcs_p() -> None:
    assert adapt(0, 0, 10, 10, 0.3, 100) == 0.3  # no evidence, no move
    assert adapt(1, 0, 10, 10, 0.3, 100) == pytest.approx(0.31)  # one block of the tier up
    assert adapt(0, 1, 10, 10, 0.3, 100) == pytest.approx(0.29)
    # The rarer kind of evidence counts more: a fresh ghost back while reused ghosts are 4x as many.
    assert adapt(1, 0, 5, 20, 0.3, 100) == pytest.approx(0.34)
    assert adapt(0, 1, 5, 20, 0.3, 100) == pytest.approx(0.29)
    assert adapt(500, 0, 1, 1, 0.3, 100) == 1.0 and adapt(0, 500, 1, 1, 0.3, 100) == 0.0


def test_fresh_surplus_counts_what_stays() -> None:
    assert fresh_surplus(60, 100, 20, 0.5) == 20  # 80 stay, fresh may keep 40 of them
    assert fresh_surplus(10, 100, 20, 0.5) == -30
    assert fresh_surplus(10, 100, 200, 0.5) == 10


def test_a_restored_block_counts_as_reused() -> None:
    # Capacity 2, no slack.  [3] evicts 1 (a fresh ghost); [1] comes back: at the pass it counts as reused, so
    # the fresh blocks 2, 3, 5 go before it and the last [1] hits.  LRU evicts 1 at [6]'s pass.
    seq = [[1], [2], [3], [1], [5], [6], [1]]
    assert simulate_adaptive(seq, 2).hit_blocks == 1
    assert simulate_lru(seq, 2).hit_blocks == 0


def test_share_starts_at_2qs() -> None:
    from kvfs.policy.twoq import PROBATION_SHARE

    assert SHARE_INITIAL == PROBATION_SHARE


@pytest.mark.parametrize("seed", [11])
def test_adaptive_above_lru_over_every_workload(seed: int) -> None:
    total_mine = total_lru = 0
    for workload in WORKLOADS:
        trace = [r.hash_ids for r in generate(workload, requests=600, seed=seed)]
        for fraction in (0.02, 0.1):
            capacity = max(1, int(unique_blocks(trace) * fraction))
            slack = max(1, capacity // 100)
            total_mine += simulate_adaptive(trace, capacity, slack).hit_blocks
            total_lru += simulate_lru(trace, capacity, slack).hit_blocks
    assert total_mine > total_lru


def test_replay_all_runs_every_policy_in_memory() -> None:
    trace = [r.hash_ids for r in generate("chat", requests=150, seed=4)]
    result = replay(trace, 60, policy=["adaptive", "all"])
    assert list(result.policies) == ["adaptive", "2q", "lru", "prefix", "slru", "s3fifo", "arc"]
    with pytest.raises(ValueError, match="no catalog version"):
        replay(trace, 60, policy="arc", through_catalog=True)


def test_cli_policies_all(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from kvfs.cli import main as kvfs_cli
    from tools.tracegen import write_trace

    trace = tmp_path / "rag.jsonl"
    with trace.open("w") as fh:
        write_trace(generate("rag", requests=100, seed=3), fh)
    out = CliRunner().invoke(
        kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "all", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data["policies"]) == {"2q", "lru", "prefix", "slru", "adaptive", "s3fifo", "arc"}
    refused = CliRunner().invoke(
        kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "all", "--through-catalog"]
    )
    assert refused.exit_code == 2 and "no catalog version" in refused.output
