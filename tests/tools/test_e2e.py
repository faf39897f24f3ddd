"""The end-to-end GPU benchmark's pure parts on CPU (arguments, prompts, result maths, table), so the script
cannot rot between GPU runs; the engine phases themselves run only on the GPU machine."""

from __future__ import annotations

import os

import pytest

from tools.e2e import engine
from tools.e2e import main as e2e


def test_arguments_and_prompt_sizes():
    args = e2e.parse_args(["--prompts", "8k,32k,128k", "--roots", "shm", "--setting", "kvfs_idle_wait=0"])
    # 128k leaves room for the decoded tokens within Llama-3.1's 131,072-token context
    assert args.prompt_sizes == [8192, 32768, 130048]
    assert args.roots == ["shm"] and args.settings == {"kvfs_idle_wait": 0}
    assert e2e.parse_args(["--setting", "kvfs_io_threads=16"]).settings == {"kvfs_io_threads": 16}
    assert e2e.parse_args(["--setting", "kvfs_store_budget=30s"]).settings == {"kvfs_store_budget": "30s"}


@pytest.mark.parametrize(
    "argv",
    [["--roots", "nfs"], ["--prompts", ",,"], ["--prompts", "0k"], ["--reps", "0"], ["--setting", "x=1"]],
)
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        e2e.parse_args(argv)
    assert exc.value.code == 2


def test_kv_bytes_per_token_of_the_model_shapes():
    assert (
        engine.kv_bytes_per_token(e2e.MODELS["llama3-8b"]) == 32 * 2 * 8 * 128 * 2
    )  # 128 KiB: 32 MiB a file
    assert engine.kv_bytes_per_token(e2e.MODELS["qwen2.5-7b"]) == 28 * 2 * 4 * 128 * 2


def test_prompts_are_deterministic_and_share_no_prefix():
    a, b = engine.prompt_tokens(1000, 1, 128256), engine.prompt_tokens(1000, 2, 128256)
    assert a == engine.prompt_tokens(1000, 1, 128256) and len(a) == 1000
    assert a[:16] != b[:16]


def _hit(variant, ttft, gbps=20.0, equal=True):
    return {"variant": variant, "ttft_s": ttft, "tokens_equal": equal, "load_gbps": gbps}


RESULTS = {
    "roots": {
        "shm": {
            "writer": {
                "prompts": [
                    {
                        "tokens": 32768,
                        "cold_ttft_s": 4.5,
                        "host_limit": {
                            "read": 30.0,
                            "read_h2d": 25.0,
                            "read_first": 24.0,
                            "read_h2d_first": 16.0,
                        },
                        "stores": {"stored": 127.0, "exists": 1.0, "dropped": 0.0},
                        "hits": [
                            _hit("default", 0.30),
                            _hit("before", 0.40, 10.0),
                            _hit("default", 0.25, 30.0),
                            _hit("before", 0.50),
                            _hit("default", 0.35),
                            _hit("before", 0.45),
                        ],
                    },
                    {
                        "tokens": 65536,
                        "cold_ttft_s": 16.0,
                        "stores": {"stored": 200.0, "dropped": 56.0},
                        "hits": [],
                    },
                ]
            },
            "reader": {
                "prompts": [{"tokens": 32768, "first_ttft_s": 0.5, "again_ttft_s": 0.4, "tokens_equal": True}]
            },
        }
    },
    "cpu": {"prompts": [{"tokens": 32768, "hits": [_hit("cpu", 0.2), _hit("cpu", 0.25), _hit("cpu", 0.3)]}]},
}


def test_rows_take_medians_and_ratios_against_the_cpu_tier():
    row, long = e2e.rows_of(RESULTS)
    assert (row.root, row.tokens, row.chunks, row.stored, row.dropped) == ("shm", 32768, 128, 128, 0)
    assert row.hit_s == 0.30 and row.hit_before_s == 0.45 and row.cpu_hit_s == 0.25
    assert row.vs_cpu == pytest.approx(1.2) and row.before_vs_cpu == pytest.approx(1.8)
    assert row.reader_vs_cpu == pytest.approx(2.0) and row.speedup == pytest.approx(15.0)
    assert row.load_gbps == 20.0 and row.tokens_equal
    # the first hit reads files just written: its own load against the first-read limit; the later hits (both
    # variants) against the limit of reading them again
    assert row.first_load_gbps == 20.0 and row.first_limit_gbps == 16.0 and row.first_vs_limit == 1.25
    assert row.limit_gbps == 25.0 and row.vs_limit == pytest.approx(0.8)
    assert "| 20.0 / 20.0 | 16.0 / 25.0 | 1.25 / 0.80 |" in e2e.format_table([row])
    # a prompt without hits or CPU-tier figures has no ratios, and its drops are shown
    assert long.hit_s is None and long.vs_cpu is None and long.dropped == 56 and long.stored == 200


def test_fresh_engine_runs_report_drops_per_run_and_the_limit_falls_back_to_the_raw_read():
    run = {
        "prompts": [{"tokens": 130048, "stores": {"stored": 508.0}, "host_limit": {"read": 40.0}, "hits": []}]
    }
    dropped = {"prompts": [{"tokens": 130048, "stores": {"stored": 444.0, "dropped": 64.0}, "hits": []}]}
    shm = {"writer": run, "fresh": [run, dropped, run]}
    (row,) = e2e.rows_of({"roots": {"shm": shm}})
    assert row.drops_per_run == (0, 64, 0) and row.limit_gbps == 40.0 and row.dropped == 0
    assert "dropped stores per fresh engine [0, 64, 0] of 508 chunks each" in e2e.format_table([row])
    (one,) = e2e.rows_of({"roots": {"shm": {"writer": run}}})  # a single run: no per-run line
    assert one.drops_per_run == () and "fresh engine" not in e2e.format_table([one])
    assert e2e.parse_args(["--fresh-engines", "3"]).fresh_engines == 3
    with pytest.raises(SystemExit):
        e2e.parse_args(["--fresh-engines", "0"])


def test_host_limit_reads_the_files_with_the_threads(tmp_path):
    """The raw-read probe on CPU: every variant reads every byte (no GPU copy without a GPU), and its figures
    are positive; the writer records the files its prompt stored."""
    from tools.e2e import hostlimit

    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.kvfs"
        p.write_bytes(bytes([i]) * (3 << 20))
        paths.append(str(p))
    got = hostlimit.measure(paths, 2, reps=1)
    assert got["files"] == 6 and got["file_bytes"] == 3 << 20 and got["threads"] == 2
    for key in ("read", "read_1t", "read_2mib", "read_pageable", "memcpy"):
        assert got[key] > 0, key
    assert "read_h2d" not in got and hostlimit.limit_of(got) == got["read"]
    # the first-read figure reads fresh copies, written beside the files and removed again
    assert (
        got["first_files"] == 6
        and got["read_first"] > 0
        and hostlimit.first_limit_of(got) == got["read_first"]
    )
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    few = hostlimit.measure(paths, 2, reps=1, first_files=2)
    assert few["first_files"] == 2 and "read_h2d_first" not in few
    assert sorted(e2e.block_files(str(tmp_path))) == sorted(paths)
    assert e2e.host_limit([str(tmp_path / "missing.kvfs")], 2)["error"].startswith("FileNotFoundError")
    assert e2e.host_limit([str(tmp_path / "missing.kvfs")], 2, cold=True)["error"].startswith(
        "FileNotFoundError"
    )


def test_a_hit_with_different_tokens_is_flagged():
    bad = {
        "roots": {
            "shm": {"writer": {"prompts": [{"tokens": 256, "hits": [_hit("default", 0.1, equal=False)]}]}}
        }
    }
    (row,) = e2e.rows_of(bad)
    assert not row.tokens_equal
    assert "**NO**" in e2e.format_table([row])


def test_table_prints_every_figure():
    table = e2e.format_table(e2e.rows_of(RESULTS))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|") == 18
    assert (
        "| shm | 32,768 | 4.50 s | 0.300 s | 0.450 s | 0.500 s | 0.400 s | 0.250 s | 1.20× | 1.80× | 2.00× "
        "| 15.0× | 128/128 | 20.0 / 20.0 | 16.0 / 25.0 | 1.25 / 0.80 | yes |" in table
    )
    assert "128/128" in table and "200/256 (56 dropped)" in table and "—" in lines[3]


def test_evictor_line():
    ev = {
        "prompts": 4, "tokens": 16384, "rounds": 3, "capacity_bytes": 2.8e9, "needed_bytes": 8.6e9,
        "capacity_chunks": 85, "fraction": 1 / 3, "hit_ratio": 0.2, "hit_ratio_after_first": 0.3,
        "belady_hit_ratio": 0.31, "lru_hit_ratio": 0.0, "tokens_equal": True, "request_errors": 0,
        "load_misses": 0, "evictor_errors": 0, "peak_usage_ratio": 0.95, "requests": [],
    }  # fmt: skip
    line = e2e.format_evictor(ev)
    assert "hit ratio 0.200 (rounds 2+: 0.300)" in line and "Belady 0.310" in line
    assert e2e.format_evictor({"error": "boom"}) == "evictor phase: boom"


def test_oracles_break_belady_ties_tail_first():
    """4 prompts of 64 chunks in 3 rounds, capacity 85 chunks: with ties broken tail first Belady keeps a leading
    run (head-first ties would keep none); LRU keeps nothing of a cyclic sequence larger than the tier."""
    assert engine.watermark_blocks(100) == (
        85,
        70,
    )  # the evictor's default watermarks, read from its settings
    got = e2e.oracles(4, 64, 3, 85)
    assert got["lru_hit_ratio"] == 0.0
    assert 0.05 < got["belady_hit_ratio"] < 0.34
    assert got["belady_watermarks_hit_ratio"] <= got["belady_hit_ratio"]


class ScriptedEngine:
    """The harness's view of an engine (no vLLM on CI): greedy tokens are the prompt's first tokens, a prompt seen
    before "loads" its chunks, and kvfs counters move as a real engine's would. It checks the harness's own
    bookkeeping (per-prompt loop, metric deltas, variants, error isolation); the engine path runs on the GPU."""

    startup_s = 1.0

    def __init__(self, kvfs: bool = True, fail_on: int | None = None) -> None:
        self.kvfs, self.fail_on = kvfs, fail_on
        self.metrics = {
            "kvfs_connector_stores_total{outcome=stored}": 0.0,
            "kvfs_connector_load_bytes_total{}": 0.0,
            "kvfs_connector_job_seconds_sum{kind=load}": 0.0,
            "kvfs_connector_io_seconds_total{op=load,stage=read}": 0.0,
        }
        self.seen: set[int] = set()
        self.idle_waits: list[float | None] = []
        self.llm = self
        self.resets = 0

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def probe(self, idle_wait_s=None):  # type: ignore[no-untyped-def]
        self.idle_waits.append(idle_wait_s)
        return {"metrics": dict(self.metrics), "threads": 16, "cpus": 16, "store_gbps": 12.0}

    def generate(self, tokens):  # type: ignore[no-untyped-def]
        if len(tokens) == self.fail_on:
            raise RuntimeError("engine died")
        chunks = len(tokens) // engine.CHUNK_TOKENS
        if len(tokens) in self.seen:
            self.metrics["kvfs_connector_load_bytes_total{}"] += chunks * 1e6
            self.metrics["kvfs_connector_job_seconds_sum{kind=load}"] += chunks * 1e-4
            ttft = 0.01 * chunks
        else:
            self.seen.add(len(tokens))
            self.metrics["kvfs_connector_stores_total{outcome=stored}"] += chunks
            ttft = 0.1 * chunks
        return tokens[:8], ttft, ttft

    def settle(self) -> float:
        return 0.0


def _spec(**extra):  # type: ignore[no-untyped-def]
    return {
        "sizes": [512, 1024], "seeds": [1, 2], "vocab": 5000, "reps": 2, "bytes_per_token": 1000,
        "idle_wait_s": 0.002, "root_name": "shm", **extra,
    }  # fmt: skip


def test_engine_phases_measure_every_prompt_and_feed_the_table():
    engine = ScriptedEngine()
    writer = e2e._writer(_spec(), engine)
    first, second = writer["prompts"]
    assert first["stores"] == {"stored": 2.0} and second["stores"] == {"stored": 4.0}
    assert [h["variant"] for h in first["hits"]] == ["default", "before"] * 2
    assert all(h["tokens_equal"] and h["load_gbps"] == pytest.approx(1e6 / 1e-4 / 1e9) for h in first["hits"])
    assert first["hits"][0]["loaded_tokens"] == 2 * 1e6 // 1000
    # the variants switch the idle-step wait, and the default is put back after each prompt
    assert [w for w in engine.idle_waits if w is not None][:5] == [0.002, 0.0, 0.002, 0.0, 0.002]
    refs = [p["ref_tokens"] for p in writer["prompts"]]
    reader = e2e._reader(_spec(refs=refs), ScriptedEngine())
    cpu = e2e._cpu_tier(_spec(refs=refs), ScriptedEngine(kvfs=False))
    assert all(p["tokens_equal"] for p in reader["prompts"]) and all(p["cold_equal"] for p in cpu["prompts"])
    rows = e2e.rows_of({"roots": {"shm": {"writer": writer, "reader": reader}}, "cpu": cpu})
    assert [r.tokens for r in rows] == [512, 1024] and all(r.tokens_equal for r in rows)
    assert rows[1].stored == rows[1].chunks == 4 and rows[1].hit_s == pytest.approx(0.04)


def test_a_failing_prompt_is_recorded_and_the_next_one_measured():
    writer = e2e._writer(_spec(), ScriptedEngine(fail_on=512))
    failed, ok = writer["prompts"]
    assert failed == {"tokens": 512, "error": "RuntimeError('engine died')"}
    assert ok["stores"] == {"stored": 4.0} and len(ok["hits"]) == 4


def test_a_child_that_dies_or_fails_is_reported_and_the_run_goes_on(tmp_path):
    """The parent survives its engine processes: a child that dies before writing a result, and one whose phase
    raises, each come back as an error entry (the next phase then runs)."""
    args = e2e.parse_args(["--child-timeout", "120"])
    died = e2e.run_child(args, {"phase": "nosuch", "root_name": "a"}, str(tmp_path))
    assert "without a result" in died["error"] and died["elapsed_s"] > 0
    failed = e2e.run_child(args, {"phase": "reader", "root_name": "b"}, str(tmp_path))  # no engine settings
    assert failed["error"].startswith("KeyError") and "Traceback" in failed["traceback"]


def test_tensor_parallel_ranks_are_summed_and_counted(tmp_path):
    """With --tensor-parallel-size 2 the probe answers once per rank: counters and pending work add up (each rank
    moves its share of the KV), and the files of each rank's namespace directory are counted apart."""
    assert e2e.parse_args(["--tensor-parallel-size", "2"]).tensor_parallel_size == 2
    with pytest.raises(SystemExit):
        e2e.parse_args(["--tensor-parallel-size", "0"])
    merged = engine.merge_probes(
        [
            {"metrics": {"kvfs_connector_load_bytes_total{}": 10.0}, "pending_jobs": 1, "threads": 16},
            {
                "metrics": {"kvfs_connector_load_bytes_total{}": 12.0, "x": 1.0},
                "pending_jobs": 2,
                "threads": 8,
            },
        ]
    )
    assert merged["metrics"] == {"kvfs_connector_load_bytes_total{}": 22.0, "x": 1.0}
    assert (merged["pending_jobs"], merged["unsubmitted_stores"], merged["threads"], merged["ranks"]) == (
        3,
        0,
        16,
        2,
    )
    for rank, files in ((0, 3), (1, 2)):
        bucket = tmp_path / f"org_model_0123456789ab_r{rank}" / "001" / "01_g0"
        bucket.mkdir(parents=True)
        for i in range(files):
            (bucket / f"{i:032x}.kvfs").write_bytes(b"x")
        (bucket / "a.kvfs_x.tmp").write_bytes(b"x")  # a writer's temp file is no block
    (tmp_path / ".kvfs").mkdir()
    (tmp_path / "org_model_0123456789ab").mkdir()  # no rank suffix: not a TP namespace
    assert engine.rank_files(str(tmp_path)) == {0: 3, 1: 2}
    assert engine.rank_files(str(tmp_path / "missing")) == {}


def test_cold_reader_drops_the_prompts_files_and_measures_the_raw_cold_read(tmp_path):
    """--cold-reader: before the second engine's first hit of a prompt, that prompt's files (as the writer recorded
    them) are written back and dropped from the page cache; after its hits the raw read of the same files is
    measured cold with the engine's threads; the report prints both."""
    from tools.e2e import hostlimit

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.kvfs"
        p.write_bytes(bytes([i + 1]) * (1 << 20))
        paths.append(str(p))
    assert hostlimit.drop_from_page_cache(paths) == 4 << 20
    cold = hostlimit.measure_cold(paths, 2)
    assert cold["cold_read"] > 0 and cold["files"] == 4 and "cold_read_h2d" not in cold
    assert e2e.parse_args(["--cold-reader"]).cold_reader
    writer = e2e._writer(_spec(), ScriptedEngine())
    refs = [p["ref_tokens"] for p in writer["prompts"]]
    reader = e2e._reader(_spec(refs=refs, cold=True, prompt_files={"512": paths}), ScriptedEngine())
    first, second = reader["prompts"]
    assert first["cold"] and first["cold_limit"]["cold_read"] > 0 and first["cold_limit"]["threads"] == 16
    assert not second["cold"] and "cold_limit" not in second  # no files recorded for it: a warm hit
    line = e2e.format_cold({"roots": {"disk": {"reader": reader}}})
    assert line.startswith("disk 512, cold page cache: second engine's first hit") and "raw cold read" in line
    assert line.count("\n") == 0


def test_host_limit_runs_alone_on_files_it_writes_and_removes(tmp_path, capsys):
    from tools.e2e import hostlimit

    where = tmp_path / "probe"
    assert (
        hostlimit.main(["--dir", str(where), "--files", "4", "--mib", "1", "--threads", "2", "--reps", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert '"read_first"' in out and "first read of just-written files" in out and not where.exists()
    with pytest.raises(FileExistsError):  # never into a directory that is there (it is removed after)
        hostlimit.main(["--dir", str(tmp_path), "--files", "1", "--mib", "1"])


def test_reader_warmup_is_an_option_and_reported_beside_the_first_hit():
    assert e2e.parse_args(["--reader-warmup"]).reader_warmup and not e2e.parse_args([]).reader_warmup
    reader = {
        "prompts": [
            {"tokens": 32768, "warmup_ttft_s": 0.9, "first_ttft_s": 0.25, "again_ttft_s": 0.24},
            {"tokens": 65536, "first_ttft_s": 0.4, "again_ttft_s": 0.41},
        ]
    }
    text = e2e.format_reader_warmup({"roots": {"shm": {"reader": reader}}})
    assert text.splitlines() == [
        "shm: second engine's warm-up request (1,024 tokens of its own) 0.900 s, then its first hit of 32,768 "
        "tokens 0.250 s (later 0.240 s)"
    ]
    assert e2e.format_reader_warmup(RESULTS) == ""  # without the option: nothing


def test_the_reader_serves_its_warmup_once_before_its_first_hit():
    served: list[int] = []

    class Recording(ScriptedEngine):
        def generate(self, tokens):  # type: ignore[no-untyped-def]
            served.append(len(tokens))
            return super().generate(tokens)

    spec = _spec(sizes=[512, 2048], seeds=[1, 2], warmup=True)
    reader = e2e._reader(spec, Recording())
    first, second = reader["prompts"]
    assert served[0] == e2e.WARMUP_TOKENS and served.count(e2e.WARMUP_TOKENS) == 1
    assert first["warmup_ttft_s"] == pytest.approx(0.1 * (e2e.WARMUP_TOKENS // engine.CHUNK_TOKENS))
    assert "warmup_ttft_s" not in second
    assert "warmup_ttft_s" not in e2e._reader(_spec(), ScriptedEngine())["prompts"][0]


def test_a_full_disk_while_copying_leaves_no_copies_and_is_recorded(tmp_path, monkeypatch):
    """The first-read figure writes copies beside the prompt's files: a write that fails (ENOSPC) removes them,
    and the probe records the error beside its other figures instead of losing them."""
    import errno

    from tools.e2e import hostlimit

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.kvfs"
        p.write_bytes(bytes([i]) * (1 << 20))
        paths.append(str(p))

    def full(fd, buffers, offset):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hostlimit.os, "pwritev", full)
    got = e2e.host_limit(paths, 2)
    assert got["first_error"].startswith("OSError") and "No space left" in got["first_error"]
    assert "error" not in got and got["read"] > 0 and hostlimit.limit_of(got) == got["read"]
    assert "read_first" not in got and hostlimit.first_limit_of(got) is None
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_a_read_only_root_keeps_the_later_figures_and_claims_no_first_read(tmp_path, monkeypatch):
    """The copies' directory cannot be made (a read-only root): nothing is written, the error is recorded and
    the later-read figures stand."""
    import errno

    from tools.e2e import hostlimit

    paths = []
    for i in range(2):
        p = tmp_path / f"{i}.kvfs"
        p.write_bytes(bytes([i]) * (1 << 20))
        paths.append(str(p))

    def read_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(hostlimit.tempfile, "mkdtemp", read_only)
    got = e2e.host_limit(paths, 2)
    assert "Read-only file system" in got["first_error"] and "error" not in got
    assert got["read"] > 0 and hostlimit.limit_of(got) == got["read"]
    assert "read_first" not in got and hostlimit.first_limit_of(got) is None
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
