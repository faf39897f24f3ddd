"""`kvfs replay`: simulators against hand-checked traces and brute force, the catalog replay, the CLI."""

from __future__ import annotations

import json
import random
from functools import cache
from itertools import combinations
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvfs.cli import main as kvfs_cli
from kvfs.policy import DEFAULT_POLICY
from kvfs.replay import (
    leading_hits,
    parse_capacity,
    replay,
    simulate_belady,
    simulate_catalog_policy,
    simulate_fifo,
    simulate_lru,
    unique_blocks,
)
from tools.oracles import (
    main as oracles_main,
)
from tools.oracles import (
    simulate_oracle_dead_lru,
    simulate_oracle_frequency,
    simulate_oracle_stable,
)
from tools.tracegen import generate, write_trace

SINGLE = [[1], [2], [1], [3], [2], [1]]


def test_leading_hits_is_the_cached_prefix() -> None:
    assert leading_hits([1, 2, 3], {1, 2, 3}) == 3
    assert leading_hits([1, 2, 3], {1, 3}) == 1
    assert leading_hits([1, 2, 3], {2, 3}) == 0
    assert leading_hits([], {1}) == 0


def test_hand_checked_single_block_trace() -> None:
    # Capacity 2; the block a request just used is never the victim.  LRU: only r2 hits.  FIFO: r2, and r4
    # (storing 3 pushed out 1, the oldest store).  Belady: at r3, 3 is protected; 1 is next used at r5, 2 at
    # r4, so 1 goes: r2 and r4 hit.  At capacity 3 everything after the first use of each block hits.
    assert simulate_lru(SINGLE, 2).hit_blocks == 1
    assert simulate_fifo(SINGLE, 2).hit_blocks == 2
    assert simulate_belady(SINGLE, 2).hit_blocks == 2
    assert simulate_belady(SINGLE, 2).total_blocks == 6
    for sim in (simulate_lru, simulate_fifo, simulate_belady):
        assert sim(SINGLE, 3).hit_blocks == 3
    assert simulate_lru(SINGLE, 2).hit_ratio == pytest.approx(1 / 6)
    # Each request's hits, in order (an engine's per-request hits are set beside them): LRU hits only r2.
    assert simulate_lru(SINGLE, 2).per_request == [0, 0, 1, 0, 0, 0]
    assert simulate_belady(SINGLE, 3).per_request == [0, 0, 1, 0, 1, 1]


def test_hand_checked_prefix_trace_protects_the_current_request() -> None:
    trace = [[1, 2], [1, 3], [1, 2]]
    # Capacity 3: everything fits: r1 hits 1, r2 hits 1 and 2.
    assert simulate_lru(trace, 3).hit_blocks == 3
    # Capacity 2: after r1 the cache is {1, 2, 3}; 1 and 3 belong to r1, so 2 goes whatever the policy.
    for sim in (simulate_lru, simulate_fifo, simulate_belady):
        assert sim(trace, 2).hit_blocks == 2, sim.__name__
    # Slack 1: each pass goes down to capacity - 1, never below the current request.
    assert simulate_lru([[1], [2], [3], [1]], 2, slack=1).hit_blocks == 0
    assert simulate_lru([[1], [2], [1]], 2, slack=1).hit_blocks == 1


def test_lru_evicts_the_tail_of_a_chain_first(tmp_path: Path) -> None:
    # After r0 the chain 1-2-3 is cached; r1 brings 4 and one block must go: the tail (3), so r2 still hits
    # its whole prefix 1-2.  Evicting the head instead would have made 2 and 3 useless.
    trace = [[1, 2, 3], [4], [1, 2]]
    assert simulate_lru(trace, 3).hit_blocks == 2
    assert simulate_catalog_policy(trace, 3, policy="lru", workdir=tmp_path).hit_blocks == 2
    assert simulate_catalog_policy(trace, 3, policy="2q", workdir=tmp_path).hit_blocks == 2
    assert simulate_catalog_policy(trace, 3, policy="prefix", workdir=tmp_path).hit_blocks == 2


def test_oracles_use_their_knowledge() -> None:
    # Capacity 2; at r3 one of 1 (never used again) and 2 (used at r4) must go.  LRU drops 2 (older).
    trace = [[1], [2], [1], [3], [2]]
    assert simulate_lru(trace, 2).hit_blocks == 1
    assert simulate_oracle_dead_lru(trace, 2).hit_blocks == 2  # drops the dead block 1: r2 and r4 hit
    assert simulate_oracle_frequency(trace, 2).hit_blocks == 2


def test_stable_oracle_keeps_the_most_requested_blocks() -> None:
    # Capacity 2: block 1 comes back every third request, between one-off blocks.  LRU always drops it before
    # its return (0 hits); with a stable half (1 block: the most requested, 1) it stays and hits twice.
    trace = [[1], [2], [3], [1], [4], [5], [1]]
    assert simulate_lru(trace, 2).hit_blocks == 0
    assert simulate_oracle_stable(trace, 2, share=0.5).hit_blocks == 2
    # Stable blocks stay once stored, never before: the first request of each is a miss.
    assert simulate_oracle_stable([[1], [1]], 1, share=1.0).hit_blocks == 1
    with pytest.raises(ValueError, match="share"):
        simulate_oracle_stable(trace, 2, share=1.5)


def test_stable_oracle_without_a_stable_share_is_the_reference_lru(chat_trace) -> None:
    capacity = int(unique_blocks(chat_trace) * 0.05)
    for slack in (0, 3):
        ref = simulate_lru(chat_trace, capacity, slack)
        got = simulate_oracle_stable(chat_trace, capacity, slack, share=0.0)
        assert (got.hit_blocks, got.total_blocks, got.evicted) == (
            ref.hit_blocks,
            ref.total_blocks,
            ref.evicted,
        )


def test_oracles_cli_prints_every_bound(tmp_path: Path, capsys) -> None:
    path = tmp_path / "chat.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        write_trace(generate("chat", requests=120, seed=3), fh)
    assert oracles_main([str(path), "--capacity", "0.1"]) == 0
    out = capsys.readouterr().out
    for name in ("belady", "oracle frequency", "dead-block", "stable 50%", "stable 90%", "lru", "fifo"):
        assert name in out


def _brute_force_best(requests: list[list[int]], capacity: int) -> int:
    """Most block hits any eviction choice achieves (evicting exactly the excess, never the current request)."""

    @cache
    def best(i: int, cached: frozenset[int]) -> int:
        if i == len(requests):
            return 0
        req = requests[i]
        hits = leading_hits(req, cached)
        after = cached | set(req)
        excess = len(after) - capacity
        if excess <= 0:
            return hits + best(i + 1, after)
        evictable = sorted(after - set(req))
        return hits + max(best(i + 1, after - set(drop)) for drop in combinations(evictable, excess))

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(12))
def test_belady_is_optimal_for_single_block_requests(seed: int) -> None:
    rng = random.Random(seed)
    trace = [[rng.randrange(6)] for _ in range(12)]
    capacity = rng.choice([2, 3])
    assert simulate_belady(trace, capacity).hit_blocks == _brute_force_best(trace, capacity)


@pytest.mark.parametrize("seed", range(8))
def test_policies_never_beat_the_brute_force_optimum_on_prefix_traces(seed: int) -> None:
    rng = random.Random(100 + seed)
    chains = [[10 * c + p for p in range(rng.randint(1, 3))] for c in range(4)]
    trace = [rng.choice(chains)[: rng.randint(1, 3)] for _ in range(9)]
    capacity = 4
    best = _brute_force_best(trace, capacity)
    for sim in (
        simulate_belady,
        simulate_lru,
        simulate_fifo,
        simulate_oracle_frequency,
        simulate_oracle_dead_lru,
        simulate_oracle_stable,
    ):
        assert sim(trace, capacity).hit_blocks <= best
    assert simulate_catalog_policy(trace, capacity, policy="2q").hit_blocks <= best


@pytest.fixture(scope="module")
def chat_trace() -> list[tuple[int, ...]]:
    return [r.hash_ids for r in generate("chat", requests=400, seed=7)]


def test_catalog_lru_replay_matches_the_reference_lru_exactly(chat_trace, tmp_path: Path) -> None:
    # The catalog replay drives the evictor's real planner and LRU policy: block for block the same hits.
    capacity = int(unique_blocks(chat_trace) * 0.05)
    for slack in (0, 3):
        ref = simulate_lru(chat_trace, capacity, slack)
        real = simulate_catalog_policy(chat_trace, capacity, slack, policy="lru", workdir=tmp_path)
        assert (real.hit_blocks, real.total_blocks) == (ref.hit_blocks, ref.total_blocks)
        assert real.evicted == ref.evicted


# The default policy against LRU on every workload and size: tests/kvfs/test_replay_memory.py.


def test_replay_result_and_capacity_parsing(chat_trace) -> None:
    result = replay(chat_trace, 50)
    assert result.policy == DEFAULT_POLICY and result.capacity_blocks == 50 and result.slack_blocks == 1
    assert result.requests == 400 and result.unique_blocks == unique_blocks(chat_trace)
    assert 0 < result.lru_hit_ratio <= 1 and 0 < result.belady_hit_ratio <= 1
    assert result.vs_belady == pytest.approx(result.hit_ratio / result.belady_hit_ratio)
    assert parse_capacity("0.05", 1000) == 50
    assert parse_capacity("5%", 1000) == 50
    assert parse_capacity("120", 1000) == 120
    assert parse_capacity("1.0", 1000) == 1000
    for bad in ("0", "-3", "1.5", "0%", "abc", ""):
        with pytest.raises(ValueError):
            parse_capacity(bad, 1000)
    with pytest.raises(ValueError):
        replay(chat_trace, 0)


def _write(path: Path, trace_text: str) -> Path:
    path.write_text(trace_text)
    return path


def test_cli_json_keys_and_table(tmp_path: Path) -> None:
    trace = tmp_path / "chat.jsonl"
    with trace.open("w") as fh:
        write_trace(generate("chat", requests=150, seed=3), fh)
    runner = CliRunner()
    out = runner.invoke(kvfs_cli, ["replay", str(trace), "--capacity", "0.1", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    for k in (
        "hit_ratio",
        "belady_hit_ratio",
        "lru_hit_ratio",
        "fifo_hit_ratio",
        "capacity_blocks",
        "unique_blocks",
        "requests",
    ):
        assert k in data
    assert data["requests"] == 150 and data["policy"] == DEFAULT_POLICY
    assert data["capacity_blocks"] == int(data["unique_blocks"] * 0.1)
    lru = runner.invoke(kvfs_cli, ["replay", str(trace), "--capacity", "40", "--policy", "lru", "--json"])
    lru_data = json.loads(lru.output)
    assert lru_data["policy"] == "lru" and lru_data["hit_ratio"] == lru_data["lru_hit_ratio"]
    text = runner.invoke(kvfs_cli, ["replay", str(trace), "--capacity", "10%"])
    assert text.exit_code == 0 and "belady" in text.output and "fifo" in text.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(
        tmp_path / "t.jsonl", '{"timestamp": 0, "hash_ids": [1, 2]}\n\n{"timestamp": 1, "hash_ids": [1]}\n'
    )
    cases = [
        (["--capacity", "2", "--policy", "nope"], "unknown eviction policy"),
        (["--capacity", "1.5"], "capacity fraction"),
        (["--capacity", "lots"], "not a capacity"),
    ]
    for args, message in cases:
        out = runner.invoke(kvfs_cli, ["replay", str(good), *args])
        assert out.exit_code != 0 and message in out.output, out.output
    bad = _write(tmp_path / "bad.jsonl", '{"timestamp": 0, "hash_ids": [1]}\n{"hash_ids": "x"}\n')
    out = runner.invoke(kvfs_cli, ["replay", str(bad), "--capacity", "2"])
    assert out.exit_code != 0 and "line 2" in out.output
    empty = _write(tmp_path / "empty.jsonl", "\n")
    out = runner.invoke(kvfs_cli, ["replay", str(empty), "--capacity", "2"])
    assert out.exit_code != 0 and "no requests" in out.output
    negative = _write(tmp_path / "neg.jsonl", '{"hash_ids": [-1]}\n')
    out = runner.invoke(kvfs_cli, ["replay", str(negative), "--capacity", "2"])
    assert out.exit_code != 0 and "negative" in out.output


def test_tracegen_is_deterministic_and_prefix_consistent() -> None:
    for workload in ("chat", "agent", "rag", "mixed", "sysprompt", "sessions"):
        a = generate(workload, requests=200, seed=5)
        assert a == generate(workload, requests=200, seed=5)
        assert a != generate(workload, requests=200, seed=6)
        assert len(a) == 200
        assert all(x.timestamp_ms <= y.timestamp_ms for x, y in zip(a, a[1:], strict=False))
        # A block id always sits at one position behind one parent: prefix (chained-hash) semantics.
        where: dict[int, tuple[int, int]] = {}
        for req in a:
            assert req.hash_ids and req.input_length > 512 * (len(req.hash_ids) - 1)
            for pos, h in enumerate(req.hash_ids):
                parent = req.hash_ids[pos - 1] if pos else -1
                assert where.setdefault(h, (pos, parent)) == (pos, parent)
        total = sum(len(r.hash_ids) for r in a)
        assert unique_blocks([r.hash_ids for r in a]) < total  # every workload reuses something


def test_tracegen_chat_turns_extend_the_previous_prefix() -> None:
    trace = generate("chat", requests=300, seed=1)
    seen_full: set[tuple[int, ...]] = set()
    extended = 0
    for req in trace:
        ids = req.hash_ids
        # The previous turn's full blocks (all but its partial last one) are a prefix of this one.
        if any(ids[:k] in seen_full for k in range(1, len(ids))):
            extended += 1
        seen_full.add(ids[:-1])
    assert extended > 100


def test_tracegen_new_workloads_have_their_shape() -> None:
    # sysprompt: every request starts with one of a few long prompts (>= 3 shared blocks); sessions: most
    # requests extend an earlier one's prefix, and some turns come back after a pause of 5+ minutes.
    sys_trace = generate("sysprompt", requests=300, seed=1)
    heads = {r.hash_ids[:3] for r in sys_trace if len(r.hash_ids) > 3}
    assert len(heads) <= 24 and sum(len(r.hash_ids) > 3 for r in sys_trace) > 250
    sessions = generate("sessions", requests=400, seed=1)
    seen_full: set[tuple[int, ...]] = set()
    extended = 0
    for req in sessions:
        if any(req.hash_ids[:k] in seen_full for k in range(4, len(req.hash_ids))):
            extended += 1
        seen_full.add(req.hash_ids[:-1])
    assert extended > 250
    last_seen: dict[tuple[int, ...], int] = {}
    resumed = 0
    for req in sessions:
        for k in range(len(req.hash_ids) - 1, 3, -1):
            t = last_seen.get(req.hash_ids[:k])
            if t is not None:
                resumed += req.timestamp_ms - t > 300_000
                break
        last_seen[req.hash_ids[:-1]] = req.timestamp_ms
    assert resumed > 10


def test_tracegen_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        generate("nope")
    with pytest.raises(ValueError, match="negative"):
        generate("chat", requests=-1)
