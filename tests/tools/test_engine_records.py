"""tools.bench.engine_records: a trace through the real catalog with a request's records as an engine writes them."""

from __future__ import annotations

import pytest

from kvfs.replay import simulate_policy
from kvfs.replay.catalog_replay import block_key
from tools.bench import engine_records
from tools.tracegen import generate


def test_request_stamps_are_the_catalog_replay_record_for_record() -> None:
    trace = [list(r.hash_ids) for r in generate("chat", requests=40, seed=2)]
    for policy in ("lru", "adaptive"):
        got = engine_records.replay(trace, 60, 12, policy, "request")
        want = simulate_policy(trace, 60, 12, policy, through_catalog=True)
        assert (got.hit_blocks, got.total_blocks, got.evicted) == (
            want.hit_blocks,
            want.total_blocks,
            want.evicted,
        )


def test_stores_stamped_as_they_finish_can_take_a_chains_head_first() -> None:
    """Two chains of 4, then a third request forces a pass that evicts one chain and half of the next: with one
    time per request LRU takes that chain's tail (its head still serves the next request); with each store
    stamped as its file finished, some finishing orders take the head, and none keeps more."""
    trace = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [5, 6, 7, 8, 13]]
    assert engine_records.replay(trace, 8, 2, "lru", "request").hit_blocks == 2
    per_file = [engine_records.replay(trace, 8, 2, "lru", "per-file", seed).hit_blocks for seed in range(10)]
    assert max(per_file) <= 2 and min(per_file) < 2


def test_the_benchmark_prints_each_mode_beside_the_in_memory_replay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine_records.main(["--trace", "chat:30", "--policy", "lru", "--draws", "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("chat:30 seed 1,") and "in-memory replay" in out[0]
    assert [line.split()[0] for line in out[1:]] == list(engine_records.MODES)
    assert "1.000x the in-memory replay" in out[1] and "2 draws" in out[2]
    with pytest.raises(ValueError, match="unknown mode"):
        engine_records.replay([[1]], 1, 0, "lru", "nope")


def test_interleaved_requests_are_regrouped_by_their_time() -> None:
    """A batch of concurrent requests journals its records interleaved: the evictor regroups them by the request's
    time, so `adaptive` chooses as if they came one by one (grouped by chain position alone: 0.4885 against 0.5010
    on `sysprompt`)."""
    from tools.e2e.trace import trace_requests

    records = [
        engine_records.JournalRecord(engine_records.RecordKind.ACCESS, block_key(n), t, 0, 0)
        for n, t in ((1, 1.0), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0))
    ]
    assert [r.key for r in engine_records.interleaved(records, 2)] == [block_key(n) for n in (1, 3, 2, 4, 5)]
    assert engine_records.interleaved(records, 1) == records
    trace = trace_requests("sysprompt", 150, 1)
    one_by_one = engine_records.replay(trace, 130, 23, "adaptive", "request")
    batched = engine_records.replay(trace, 130, 23, "adaptive", "request", interleave=8)
    assert batched.hit_blocks == one_by_one.hit_blocks
