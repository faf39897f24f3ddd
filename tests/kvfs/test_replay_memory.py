"""The fast replay: the in-memory `prefix` replay against the catalog's, the "never worse than LRU" check,
Belady for the end-to-end benchmark, and `kvfs replay --policies`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvfs.cli import main as kvfs_cli
from kvfs.replay import belady_prefix_hit_ratio, replay, simulate_belady, simulate_lru, unique_blocks
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.memory import simulate_prefix
from tools.tracegen import WORKLOADS, generate, write_trace


@pytest.mark.parametrize("workload", ["chat", "rag", "agent", "sessions"])
def test_memory_replay_matches_the_catalog_replay_block_for_block(workload: str, tmp_path: Path) -> None:
    trace = [r.hash_ids for r in generate(workload, requests=200, seed=5)]
    for fraction in (0.05, 0.2):
        capacity = max(1, int(unique_blocks(trace) * fraction))
        slack = max(1, capacity // 100)
        fast = simulate_prefix(trace, capacity, slack)
        real = simulate_catalog_policy(trace, capacity, slack, policy="prefix", workdir=tmp_path)
        assert (fast.hit_blocks, fast.total_blocks, fast.evicted) == (
            real.hit_blocks,
            real.total_blocks,
            real.evicted,
        )


# Small generated traces of every workload: the default policy against LRU at 2, 5, 10 and 25% of the footprint,
# strictly >= in every cell (and above LRU over all of them).
@pytest.mark.parametrize("seed", [11, 12])
def test_default_policy_is_never_worse_than_lru(seed: int) -> None:
    total_prefix = total_lru = 0
    for workload in WORKLOADS:
        trace = [r.hash_ids for r in generate(workload, requests=600, seed=seed)]
        for fraction in (0.02, 0.05, 0.10, 0.25):
            capacity = max(1, int(unique_blocks(trace) * fraction))
            slack = max(1, capacity // 100)
            mine = simulate_prefix(trace, capacity, slack).hit_blocks
            lru = simulate_lru(trace, capacity, slack).hit_blocks
            assert mine >= lru, (workload, fraction, mine, lru)
            total_prefix += mine
            total_lru += lru
    assert total_prefix > total_lru


def test_belady_prefix_hit_ratio_on_block_hash_strings() -> None:
    # Capacity 2, the request just served is protected: Belady hits r2 and r4 (see test_replay's hand check).
    requests = [["a"], ["b"], ["a"], ["c"], ["b"], ["a"]]
    assert belady_prefix_hit_ratio(requests, 2) == pytest.approx(2 / 6)
    assert belady_prefix_hit_ratio(requests, 3) == pytest.approx(3 / 6)
    chat = [r.hash_ids for r in generate("chat", requests=150, seed=2)]
    as_str = [[f"h{h:x}" for h in req] for req in chat]
    assert belady_prefix_hit_ratio(as_str, 60, 1) == simulate_belady(chat, 60, 1).hit_ratio
    assert belady_prefix_hit_ratio([], 4) == 0.0
    with pytest.raises(ValueError, match="capacity"):
        belady_prefix_hit_ratio(requests, 0)


def test_replay_compares_several_policies_in_one_run() -> None:
    trace = [r.hash_ids for r in generate("rag", requests=150, seed=4)]
    result = replay(trace, 60, policy=["prefix", "2q", "lru"])
    assert list(result.policies) == ["prefix", "2q", "lru"] and result.policy == "prefix"
    assert result.policies["2q"] == simulate_catalog_policy(trace, 60, 1, policy="2q").hit_ratio
    assert result.lru_hit_ratio == result.policies["lru"] == simulate_lru(trace, 60, 1).hit_ratio
    assert replay(trace, 60, policy="prefix", through_catalog=True).hit_ratio == result.hit_ratio


def test_cli_policies_table_and_json(tmp_path: Path) -> None:
    trace = tmp_path / "agent.jsonl"
    with trace.open("w") as fh:
        write_trace(generate("agent", requests=120, seed=3), fh)
    runner = CliRunner()
    out = runner.invoke(
        kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "prefix,slru", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["policy"] == "prefix" and set(data["policies"]) == {"prefix", "slru"}
    assert data["hit_ratio"] == data["policies"]["prefix"]
    text = runner.invoke(kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "lru,prefix"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert any(line.startswith("lru (policy)") for line in lines) and any(
        line.startswith("prefix (policy)") for line in lines
    )
    assert "progress" not in text.output and "replaying" not in text.output  # no bar off a terminal
    assert sum(line.startswith("lru") for line in lines) == 1  # LRU named as a policy is not repeated
    both = runner.invoke(
        kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policy", "lru", "--policies", "lru"]
    )
    assert both.exit_code == 2 and "not both" in both.output
    unknown = runner.invoke(kvfs_cli, ["replay", str(trace), "--capacity", "5%", "--policies", "prefix,fifo"])
    assert unknown.exit_code != 0 and "unknown eviction policy 'fifo'" in unknown.output


def test_suite_prints_one_row_per_trace_and_capacity(tmp_path: Path, capsys) -> None:
    from tools.replay_suite import main as suite_main

    out = tmp_path / "suite.json"
    assert (
        suite_main(["--requests", "120", "--seeds", "3", "--capacities", "0.1,0.25", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr()
    rows = [line for line in printed.out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 2 * len(WORKLOADS)
    data = json.loads(out.read_text())
    mean = math.exp(sum(math.log(d["vs_best_other"]) for d in data) / len(data))
    assert f"geometric mean of its ratios {mean:.5f};" in printed.err
    assert {(d["trace"], d["fraction"]) for d in data} == {
        (f"{w}-3", f) for w in WORKLOADS for f in (0.1, 0.25)
    }
    assert all(d["default"] == "adaptive" == d["policy"] for d in data)
    assert all(d["policies"]["adaptive"] == d["hit_ratio"] for d in data)
    # The envelope: the default's ratio to the best of the others, every policy compared.
    for d in data:
        others = {k: v for k, v in d["policies"].items() if k != "adaptive"}
        assert set(others) == {"2q", "lru", "prefix", "slru", "s3fifo", "arc", "wtinylfu"}
        best = max(others.values())
        assert d["vs_best_other"] == round(d["hit_ratio"] / best, 4) and others[d["best_other"]] == best
