"""The two-share order's decisions (kvfs.policy.adaptive_core, one of `adaptive`'s candidates) and its in-memory
replay."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvfs.policy.adaptive_core import (
    FREQUENT,
    FRESH_SHARE_INITIAL,
    ONCE,
    State,
    adapt,
    order,
    surpluses,
)
from kvfs.replay import replay, simulate_lru, unique_blocks
from kvfs.replay.chooser import simulate_adaptive
from kvfs.replay.memory import simulate_shares
from tools.tracegen import WORKLOADS, generate


@dataclass
class B:
    name: str
    last_access: float
    chain_pos: int = 0
    size: int = 1


def names(items) -> list[tuple[str, bool | None]]:
    return [(b.name, r) for b, r in items]


def test_order_dead_blocks_then_surpluses_then_lru() -> None:
    orphans = [B("o", 9)]
    superseded = [B("s", 8)]
    fresh = [B("f1", 1), B("f2", 5), B("f3", 7)]
    once = [B("r1", 2), B("r2", 6)]
    frequent = [B("q1", 0.5), B("q2", 4)]
    live = (fresh, once, frequent)
    # Fresh surplus 1 and once surplus 1: f1, then r1, then all three classes merged by last access.
    assert names(order(orphans, superseded, live, (1, 1))) == [
        ("o", None),
        ("s", None),
        ("f1", 0),
        ("r1", ONCE),
        ("q1", FREQUENT),
        ("q2", FREQUENT),
        ("f2", 0),
        ("r2", ONCE),
        ("f3", 0),
    ]
    # Fresh surplus 2 takes f2 before the older reused blocks; no surplus is plain LRU over the three.
    assert [n for n, _ in names(order([], [], live, (2, 0)))][:3] == ["f1", "f2", "q1"]
    assert [n for n, _ in names(order([], [], live, (0, 0)))] == ["q1", "f1", "r1", "q2", "f2", "r2", "f3"]
    # A once surplus takes reused-once blocks before older frequent ones (the frequency boundary).
    assert [n for n, _ in names(order([], [], live, (0, 2)))][:3] == ["r1", "r2", "q1"]


def test_order_ties_take_the_deeper_block_first() -> None:
    fresh = [B("f-head", 3, chain_pos=0)]
    reused = [B("r-tail", 3, chain_pos=4)]
    assert [n for n, _ in names(order([], [], (fresh, [], reused), (0, 0)))] == ["r-tail", "f-head"]
    assert [n for n, _ in names(order([], [], ([B("f-tail", 3, 4)], [B("r-head", 3, 0)], []), (0, 0)))] == [
        "f-tail",
        "r-head",
    ]


def test_adapt_moves_both_boundaries_by_the_returning_sides_ghost_share() -> None:
    s = State(0.3, 0.6)
    assert adapt(s, [0, 0, 0], [10, 5, 5]) == s  # no evidence, no move
    # A fresh ghost back: the fresh share up by one over the fresh ghost list (10 left + 1 back).
    assert adapt(s, [1, 0, 0], [10, 5, 5]) == pytest.approx(State(0.3 + 1 / 11, 0.6))
    # A reused-once ghost back: fresh share down (1 of 11 reused ghosts), once share up (1 of 6 once ghosts).
    assert adapt(s, [0, 1, 0], [10, 5, 5]) == pytest.approx(State(0.3 - 1 / 11, 0.6 + 1 / 6))
    # A frequent one: both down.
    assert adapt(s, [0, 0, 1], [10, 5, 5]) == pytest.approx(State(0.3 - 1 / 11, 0.6 - 1 / 6))
    # Scaled by evidence: on a short list (a small tier) one return moves far ...
    assert adapt(s, [1, 0, 0], [1, 10, 10]).fresh_share == pytest.approx(0.8)
    # ... while a session resend bringing back 40 of 4,000 reused ghosts moves the share by 1%, not 40 steps.
    assert adapt(s, [0, 40, 0], [100, 3960, 0]).fresh_share == pytest.approx(0.29)
    # Both sides back in one pass: the net of their shares.
    assert adapt(s, [2, 2, 0], [8, 18, 0]).fresh_share == pytest.approx(0.3 + 2 / 10 - 2 / 20)
    assert adapt(s, [500, 0, 0], [1, 1, 1]).fresh_share == 1.0
    assert adapt(State(0.01, 0.01), [0, 0, 5], [1, 1, 1]) == State(0.0, 0.0)


def test_surpluses_count_what_stays() -> None:
    # 80 stay: fresh may keep 40 of them, reused-once 20.
    assert surpluses((60, 30, 10), 100, 20, State(0.5, 0.25)) == (20, 10)
    assert surpluses((10, 10, 80), 100, 20, State(0.5, 0.25)) == (-30, -10)
    assert surpluses((10, 5, 0), 100, 200, State(0.5, 0.25)) == (10, 5)


def test_a_reused_once_block_goes_before_a_frequent_one_beyond_its_share() -> None:
    # Capacity 3, no slack, once share 0 (forced): 1 is read three times (frequent), 2 once.  At [4]'s pass the
    # older frequent 1 stays and the once-read 2 goes, so the last [1] hits; LRU evicts 1 there.
    from kvfs.policy import adaptive_core
    from kvfs.replay.memory import SharesRule, simulate_chains

    seq = [[1], [1], [1], [2], [2], [3], [4], [1]]
    rule = SharesRule()
    rule.state = State(1.0, 0.0)
    saved = adaptive_core.adapt
    adaptive_core.adapt = lambda state, *_: state  # type: ignore[assignment]
    try:
        assert simulate_chains(seq, 3, 0, rule).hit_blocks == 4
    finally:
        adaptive_core.adapt = saved
    assert simulate_lru(seq, 3).hit_blocks == 3


def test_a_restored_block_counts_as_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Capacity 2, no slack, the shares held at their start (here one fresh ghost back of one would move the
    # fresh share to 1, i.e. LRU).  [3] evicts 1 (a fresh ghost); [1] comes back: at the pass it counts as
    # reused, so the fresh blocks 2, 3, 5 go before it and the last [1] hits.  LRU evicts 1 at [6]'s pass.
    from kvfs.policy import adaptive_core

    monkeypatch.setattr(adaptive_core, "adapt", lambda state, *_: state)
    seq = [[1], [2], [3], [1], [5], [6], [1]]
    assert simulate_shares(seq, 2).hit_blocks == 1
    assert simulate_lru(seq, 2).hit_blocks == 0


def test_fresh_share_starts_at_2qs() -> None:
    from kvfs.policy.twoq import PROBATION_SHARE

    assert FRESH_SHARE_INITIAL == PROBATION_SHARE == State().fresh_share


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
    assert list(result.policies) == ["adaptive", "2q", "lru", "prefix", "s3fifo", "slru", "arc", "wtinylfu"]
    with pytest.raises(ValueError, match="no catalog version"):
        replay(trace, 60, policy="arc", through_catalog=True)
    with pytest.raises(ValueError, match="no catalog version"):
        replay(trace, 60, policy="wtinylfu", through_catalog=True)


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
    assert set(data["policies"]) == {"2q", "lru", "prefix", "slru", "adaptive", "s3fifo", "arc", "wtinylfu"}
    refused = CliRunner().invoke(
        kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "all", "--through-catalog"]
    )
    assert refused.exit_code == 2 and "no catalog version" in refused.output
