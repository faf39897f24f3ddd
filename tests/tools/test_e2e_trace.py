"""The end-to-end benchmark's trace phase, without vLLM: trace to prompts, the bookkeeping of the phase under a
real `kvfs-evictor` process, the replay figures it is compared with, and the report line."""

from __future__ import annotations

import pytest

from kvfs.policy import DEFAULT_POLICY
from kvfs.replay import simulate_policy
from tools.e2e import engine
from tools.e2e import main as e2e
from tools.e2e import trace as e2e_trace
from tools.tracegen import generate


def test_trace_argument():
    assert e2e_trace.parse_trace("chat:150") == ("chat", 150)
    assert e2e_trace.parse_trace("sessions") == ("sessions", 150)
    with pytest.raises(ValueError, match="unknown workload"):
        e2e_trace.parse_trace("nosuch:10")
    with pytest.raises(ValueError, match="positive"):
        e2e_trace.parse_trace("chat:0")
    args = e2e.parse_args(["--roots", "none", "--no-cpu-tier", "--evictor-trace", "agent:40"])
    assert args.roots == [] and args.evictor_trace == ("agent", 40)


@pytest.mark.parametrize("argv", [["--evictor-trace", "chat:x"], ["--check-every", "0"], ["--roots", ""]])
def test_bad_trace_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        e2e.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_prompts_share_exactly_the_prefix_their_blocks_share():
    a = e2e_trace.request_tokens([1, 2, 3], 5000)
    b = e2e_trace.request_tokens([1, 2, 4], 5000)
    c = e2e_trace.request_tokens([1, 2, 3], 5000)
    n = engine.CHUNK_TOKENS
    assert len(a) == 3 * n and a == c
    assert a[: 2 * n] == b[: 2 * n] and a[2 * n :] != b[2 * n :]
    assert e2e_trace.checked(25, 10) == [9, 19]


class TraceEngine:
    """A stand-in for the engine (no vLLM on CI): a prompt's leading chunks seen before "load" (all but the last,
    as vLLM always computes the last token), greedy tokens are the prompt's first tokens."""

    startup_s = 1.0
    kvfs = True

    def __init__(self, bpt: int) -> None:
        self.bpt, self.seen, self.loaded = bpt, set(), 0.0
        self.llm = self

    def reset_prefix_cache(self) -> None:
        pass

    def probe(self, idle_wait_s=None):  # type: ignore[no-untyped-def]
        return {"metrics": {"kvfs_connector_load_bytes_total{}": self.loaded}}

    def generate(self, tokens):  # type: ignore[no-untyped-def]
        n = engine.CHUNK_TOKENS
        chunks = [tuple(tokens[: (i + 1) * n]) for i in range(len(tokens) // n)]
        hits = 0
        for c in chunks[:-1]:
            if c not in self.seen:
                break
            hits += 1
        self.loaded += hits * n * self.bpt
        self.seen.update(chunks)
        return tokens[:8], 0.01, 0.01

    def settle(self) -> float:
        return 0.0


def _spec(tmp_path, **extra):  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    return {
        "workload": "chat", "requests": 30, "trace_seed": 3, "check_every": 10, "vocab": 5000,
        "bytes_per_token": 10, "fraction": 0.33, "root": str(root), "out_dir": str(tmp_path),
        "phase": "evictor-trace", **extra,
    }  # fmt: skip


def test_the_phase_measures_every_request_against_the_reference_and_the_replay(tmp_path):
    spec = _spec(tmp_path)
    ref = e2e_trace.reference_phase(spec, TraceEngine(10))
    assert sorted(ref["refs"]) == ["19", "29", "9"]
    refs = {**ref["refs"], "19": [0] * 8}  # one reference that the engine will not match
    res = e2e_trace.evictor_trace_phase({**spec, "refs": refs}, TraceEngine(10), pause_s=0.0)
    trace = [r.hash_ids for r in generate("chat", requests=30, seed=3)]
    assert res["requests"] == len(res["per_request"]) == 30 and res["request_errors"] == 0
    # Nothing was written, so the evictor deleted nothing: every block seen before loads (all but the last).
    seen: set[tuple[int, ...]] = set()
    expected = 0
    for blocks in trace:
        for i in range(len(blocks) - 1):
            if tuple(blocks[: i + 1]) not in seen:
                break
            expected += 1
        seen.update(tuple(blocks[: i + 1]) for i in range(len(blocks)))
    assert res["hit_ratio"] == pytest.approx(expected / sum(len(b) for b in trace))
    assert res["tokens_checked"] == 3 and res["tokens_equal"] is False
    assert [q["i"] for q in res["per_request"] if q.get("tokens_equal") is False] == [19]
    assert res["evictor_errors"] == 0  # the evictor process was started and stopped without errors
    assert "catalog" in res  # what the evictor's catalog held: test_chain_counts_of_the_evictors_catalog
    assert 0 <= res["lru_hit_ratio"] <= res["belady_hit_ratio"] and res["replay_prefix_hit_ratio"] > 0
    assert res["policy"] == DEFAULT_POLICY and res["replay_policy_hit_ratio"] > 0
    line = e2e_trace.format_trace(res)
    assert "chat, 30 requests" in line and "tokens equal to recompute: NO (3 checked)" in line
    assert e2e_trace.format_trace({"error": "boom"}) == "evictor trace phase: boom"
    assert e2e_trace.format_trace({}) == ""


def test_a_failing_request_is_recorded_and_the_next_one_served(tmp_path):
    class Failing(TraceEngine):
        calls = 0

        def generate(self, tokens):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("engine hiccup")
            return super().generate(tokens)

    res = e2e_trace.evictor_trace_phase(_spec(tmp_path, requests=5), Failing(10), pause_s=0.0)
    assert res["request_errors"] == 1 and res["per_request"][1] == {
        "i": 1,
        "error": "RuntimeError('engine hiccup')",
    }
    assert len(res["per_request"]) == 5 and res["tokens_checked"] == 0 and res["tokens_equal"] is False


def test_chain_counts_of_the_evictors_catalog(tmp_path):
    """The phase reports the catalog's prefix bookkeeping; a catalog that is gone (the evictor never created it)
    is a reason in the report, not an exception that loses the run's figures."""
    from kvfs.catalog import BlockRow, Catalog
    from kvfs.layout import BlockKey

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url) as catalog:
        rows = [
            BlockRow(
                BlockKey("org_model_0123456789ab", None, 0, f"{n:032x}", "kvfs"), 1, 1.0, float(n), n - 1
            )
            for n in (1, 2)
        ]
        rows[1].parent_hash = rows[0].key.block_hash
        catalog.upsert_blocks(rows)
        catalog.remove_blocks([rows[0].key])
    assert e2e_trace.chain_counts(url) == {"blocks": 1, "with_parent": 1, "orphans": 1, "superseded": 0}
    gone = e2e_trace.chain_counts(f"sqlite:///{tmp_path / 'never' / 'catalog.db'}")
    assert set(gone) == {"error"} and gone["error"]


def test_the_phase_prints_its_running_figures_as_it_goes(tmp_path, capsys):
    """A phase cut short (a lent GPU's call limit) has already printed how far it got."""
    e2e_trace.evictor_trace_phase(_spec(tmp_path), TraceEngine(10), pause_s=0.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[e2e trace]")]
    assert [line.split()[2] for line in lines] == ["10/30", "20/30", "30/30"]
    assert all("hit ratio so far" in line for line in lines)
    assert e2e_trace.running_line(
        [{"tokens": 4, "loaded_tokens": 1, "tokens_equal": False}, {"error": "x"}], 9
    ) == ("2/9 requests, hit ratio so far 0.250, tokens equal 0 of 1, errors 1")


def test_the_phase_runs_and_replays_the_policy_it_is_given(tmp_path):
    """--evictor-policy: the evictor process runs that policy, and the replay it is set beside is that policy's."""
    spec = _spec(tmp_path, policy="lru")
    res = e2e_trace.evictor_trace_phase(spec, TraceEngine(10), pause_s=0.0)
    trace = [list(r.hash_ids) for r in generate("chat", requests=30, seed=3)]
    high, low = engine.watermark_blocks(res["capacity_blocks"])
    assert res["policy"] == "lru" and res["evictor_errors"] == 0
    assert res["replay_policy_hit_ratio"] == simulate_policy(trace, high, max(1, high - low), "lru").hit_ratio
    assert "under `lru`" in e2e_trace.format_trace(res)
    proc, log, log_path, _ = engine.start_evictor({**spec, "phase": "policy-check"}, spec["root"], 1 << 30)
    try:
        assert proc.args[proc.args.index("--policy") + 1] == "lru"
    finally:
        engine.stop_evictor(proc, log, log_path, {})


def test_an_unknown_evictor_policy_is_refused_before_any_engine_starts(capsys):
    with pytest.raises(SystemExit):
        e2e.parse_args(["--evictor-policy", "nope"])
    assert "unknown policy 'nope'" in capsys.readouterr().err


def test_the_engine_is_set_beside_its_replay_request_by_request(tmp_path):
    """Which requests the engine served differently from its policy's replay, and whether a load miss (a file gone
    between lookup and load) or a lookup that found less made the difference."""
    n = engine.CHUNK_TOKENS
    per_request = [
        {"i": 0, "tokens": 4 * n, "loaded_tokens": 2 * n, "misses": 0.0},  # as replayed
        {"i": 1, "error": "RuntimeError()"},  # not served: not compared
        {"i": 2, "tokens": 4 * n, "loaded_tokens": 0, "misses": 1.0},  # 3 fewer, a load miss
        {"i": 3, "tokens": 4 * n, "loaded_tokens": n, "misses": 0.0},  # 2 fewer, found less
        {"i": 4, "tokens": 4 * n, "loaded_tokens": 3 * n, "misses": 0.0},  # 1 more
    ]
    against = e2e_trace.against_replay(per_request, [2, 4, 3, 3, 2])
    assert {k: v for k, v in against.items() if k != "departures"} == {
        "same": 1, "below": 2, "blocks_lost": 5, "below_with_load_misses": 1, "above": 1, "blocks_gained": 1,
    }  # fmt: skip
    assert [(d["i"], d["replay_blocks"], d["engine_blocks"]) for d in against["departures"]] == [
        (2, 3, 0), (3, 3, 1), (4, 2, 3),
    ]  # fmt: skip
    # With `adaptive`'s orders: the replay's after the request before, the engine's last evicting pass before it.
    started = {2: 100.0, 3: 200.0, 4: 300.0}
    timed = [{**q, "started": started.get(q["i"], 0.0)} for q in per_request]
    replay_orders = ["shares", "prefix", "prefix", "2q", "2q"]
    engine_orders = [(50.0, "shares"), (150.0, "prefix"), (250.0, "s3fifo")]
    departures = e2e_trace.against_replay(timed, [2, 4, 3, 3, 2], replay_orders, engine_orders)["departures"]
    assert [(d["replay_order"], d["engine_order"]) for d in departures] == [
        ("prefix", "shares"), ("prefix", "prefix"), ("2q", "s3fifo"),
    ]  # fmt: skip
    log = (
        "2026-12-06 08:45:35,904 INFO kvfs.evictor.passes: evicted 35 files, 1.1 GiB (capacity: 35 files 1.1 GiB) "
        "[ns: 35 files 1.1 GiB]; usage 4.4 GiB of 4.8 GiB (92.2%, max_bytes); recheck kept 0, missing 0, refused "
        "0, errors 0; order s3fifo\n"
        "2026-12-06 08:45:35,910 INFO kvfs.evictor.passes: removed 70 emptied bucket directories\n"
        "2026-12-06 08:45:45,812 INFO kvfs.evictor.passes: evicted 2 files, 64 MiB (capacity: 2 files 64 MiB) [ns: "
        "2 files 64 MiB]; usage 4.1 GiB of 4.8 GiB (85.1%, max_bytes); recheck kept 0, missing 0, refused 0, "
        "errors 0; order 2q\n"
    )
    (t1, o1), (t2, o2) = e2e_trace.pass_orders(log)
    assert (o1, o2) == ("s3fifo", "2q") and t2 - t1 == pytest.approx(9.908)
    res = e2e_trace.evictor_trace_phase(_spec(tmp_path, requests=12), TraceEngine(10), pause_s=0.0)
    against = res["against_replay"]
    assert against["same"] + against["below"] + against["above"] == 12
    assert "replay_policy_per_request" not in res  # folded into against_replay
    assert "request by request against the replay: " in e2e_trace.format_trace(res)
