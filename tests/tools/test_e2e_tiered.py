"""`python -m tools.e2e.tiered` (the tiered path in a real engine, GPU machine): its pure parts on CPU — the tier
configurations it hands vLLM (built by vLLM 0.33's own TieringOffloadingSpec where 0.33 is installed), the file
count that says the cascade finished, and the table's ratios."""

from __future__ import annotations

import os

import pytest

from tools.e2e import tiered


def test_each_mode_puts_its_tier_behind_the_cpu_tier(tmp_path):
    assert tiered.secondary_tiers("cpu", str(tmp_path)) == []
    assert tiered.secondary_tiers("kvfs", str(tmp_path)) == [
        {"type": "KvfsTier", "module_path": "connector.tier", "root": str(tmp_path)}
    ]
    assert tiered.secondary_tiers("fs", str(tmp_path)) == [{"type": "fs", "root_dir": str(tmp_path)}]
    with pytest.raises(ValueError, match="unknown mode"):
        tiered.secondary_tiers("lmcache", str(tmp_path))


def test_the_engine_gets_vllm_s_tiering_spec_with_the_mode_s_tier(tmp_path):
    from tools.e2e.engine import kv_transfer_args

    spec = {"mode": "kvfs", "root": str(tmp_path), "cpu_bytes": 1 << 30}
    args = kv_transfer_args(tiered._engine_spec(spec))
    assert args is not None and args["kv_connector"] == "OffloadingConnector"
    assert args["kv_connector_extra_config"] == {
        "spec_name": "TieringOffloadingSpec",
        "cpu_bytes_to_use": 1 << 30,
        "block_size": 256,
        "secondary_tiers": tiered.secondary_tiers("kvfs", str(tmp_path)),
    }
    cpu_alone = kv_transfer_args({"connector": "cpu", "cpu_bytes": 1 << 30})
    assert (
        cpu_alone is not None and cpu_alone["kv_connector_extra_config"]["spec_name"] == "CPUOffloadingSpec"
    )
    assert kv_transfer_args({"connector": "none"}) is None


def test_only_finished_chunk_files_count(tmp_path):
    (tmp_path / "ns" / "ab").mkdir(parents=True)
    (tmp_path / "base_r0" / "abc" / "de_g0").mkdir(parents=True)
    for name in ("ns/ab/1.kvfs", "ns/ab/2.kvfs", "base_r0/abc/de_g0/f.bin"):
        (tmp_path / name).write_bytes(b"x")
    # in flight or not a chunk: temp files of either tier, the O_DIRECT probe, config files
    for name in (
        "ns/ab/.tmp.3.kvfs.x",
        "base_r0/abc/de_g0/g.bin_123.tmp",
        ".o_direct_probe_5.tmp",
        "ns/config.json",
    ):
        (tmp_path / name).write_bytes(b"x")
    assert tiered.tier_files(str(tmp_path)) == 3
    assert tiered.tier_files(str(tmp_path / "missing")) == 0


def _results(cross_kvfs: float, equal: bool = True) -> dict:
    def writer(local: float, stored: int | None) -> dict:
        prompt = {"tokens": 32768, "cold_ttft_s": 3.0, "chunks": 128, "hits": [
            {"variant": "local", "ttft_s": local, "tokens_equal": True},
            {"variant": "local", "ttft_s": local + 0.1, "tokens_equal": True},
            {"variant": "local", "ttft_s": local - 0.1, "tokens_equal": equal},
        ]}  # fmt: skip
        if stored is not None:
            prompt["stored"] = stored
        return {"prompts": [prompt]}

    def reader(first: float) -> dict:
        return {
            "prompts": [{"tokens": 32768, "first_ttft_s": first, "again_ttft_s": 0.2, "tokens_equal": True}]
        }

    return {
        "modes": {
            "cpu": {"writer": writer(0.20, None)},
            "kvfs": {"writer": writer(0.21, 128), "reader": reader(cross_kvfs)},
            "fs": {"writer": writer(0.22, 127), "reader": reader(0.80)},
        }
    }


def test_table_divides_local_hits_by_the_cpu_tier_and_cross_replica_hits_by_the_stock_tier():
    rows = tiered.rows_of(_results(cross_kvfs=0.40))
    by = {r.mode: r for r in rows}
    assert by["kvfs"].local_s == pytest.approx(0.21) and by["kvfs"].cross_s == 0.40
    assert by["cpu"].cross_s is None and by["cpu"].stored is None
    table = tiered.format_table(rows)
    kvfs_line = next(line for line in table.splitlines() if line.startswith("| KvfsTier"))
    assert "| 1.05× |" in kvfs_line  # 0.21 / 0.20
    assert "| 0.50× |" in kvfs_line  # 0.40 / 0.80
    assert "128 / 128" in kvfs_line and kvfs_line.endswith("| yes |")
    fs_line = next(line for line in table.splitlines() if line.startswith("| vLLM fs tier"))
    assert "| 1.00× |" in fs_line and "127 / 128" in fs_line


def test_a_hit_with_other_tokens_and_an_error_are_shown():
    results = _results(cross_kvfs=0.40, equal=False)
    results["modes"]["fs"]["reader"]["prompts"][0] = {"tokens": 32768, "error": "RuntimeError('boom')"}
    table = tiered.format_table(tiered.rows_of(results))
    assert all(line.endswith("| NO |") for line in table.splitlines() if line.startswith("| KvfsTier"))
    assert "- fs 32,768: RuntimeError('boom')" in table


def test_an_engine_that_failed_as_a_whole_is_named():
    results = _results(cross_kvfs=0.40)
    results["modes"]["fs"]["writer"] = {"error": "RuntimeError('no GPU')", "elapsed_s": 3.0}
    assert tiered.phase_errors(results) == ["fs writer: RuntimeError('no GPU')"]
    assert tiered.phase_errors(_results(cross_kvfs=0.40)) == []


def test_arguments_are_checked():
    args = tiered.parse_args(["--modes", "kvfs,fs", "--prompts", "32k"])
    assert args.modes == ["kvfs", "fs"] and args.prompt_sizes == [32768]
    for bad in (["--modes", "lmcache"], ["--reps", "0"], ["--prompts", "x"]):
        with pytest.raises(SystemExit):
            tiered.parse_args(bad)


@pytest.mark.vllm
def test_vllm_0_33_builds_both_tiers_from_these_configurations(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from connector.compat import VLLM_MINOR, TieringOffloadingSpec, offloading_config

    if VLLM_MINOR < (0, 33):
        pytest.skip("TieringOffloadingSpec is vLLM 0.33's (make test-vllm033 runs this)")
    from connector.tier import KvfsTier

    for mode in ("kvfs", "fs"):
        root = tmp_path / mode
        root.mkdir()
        config = offloading_config(
            {"cpu_bytes_to_use": 1 << 20, "secondary_tiers": tiered.secondary_tiers(mode, str(root))},
            engine_id=f"tiered-test-{mode}-{os.getpid()}",
        )
        spec = TieringOffloadingSpec(config)
        manager = spec.get_manager()
        tiers = manager.secondary_tiers
        try:
            assert len(tiers) == 1
            assert isinstance(tiers[0], KvfsTier) == (mode == "kvfs")
            assert type(tiers[0]).__name__ == ("KvfsTier" if mode == "kvfs" else "FileSystemTierManager")
        finally:
            manager.shutdown()  # the tiers, then the CPU tier's /dev/shm region
        assert not [f for f in os.listdir("/dev/shm") if f"tiered-test-{mode}-{os.getpid()}" in f]


def test_an_engine_s_leftover_cpu_tier_region_is_removed_and_others_kept(tmp_path, monkeypatch):
    """Every engine phase (tools.e2e.main.run_child) runs inside `removing_new_regions`."""
    from tools.e2e import main as e2e

    (tmp_path / "vllm_offload_other.mmap").write_bytes(b"x")  # another engine's, there before
    (tmp_path / "PostgreSQL.1").write_bytes(b"x")
    monkeypatch.setattr(e2e, "SHM", str(tmp_path))
    with e2e.removing_new_regions():
        (tmp_path / "vllm_offload_killed.mmap").write_bytes(b"x")  # an engine killed at its phase's end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PostgreSQL.1", "vllm_offload_other.mmap"]
    with pytest.raises(RuntimeError), e2e.removing_new_regions():  # also when the phase fails
        (tmp_path / "vllm_offload_failed.mmap").write_bytes(b"x")
        raise RuntimeError("engine died")
    assert not (tmp_path / "vllm_offload_failed.mmap").exists()


def test_engine_base_writes_the_model_shape_and_the_prompts(tmp_path):
    import json

    from tools.e2e.main import MODELS, engine_base

    args = tiered.parse_args(["--prompts", "1k,2k", "--reps", "2", "--model", "qwen2.5-7b"])
    base = engine_base(args, str(tmp_path))
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == MODELS["qwen2.5-7b"]
    assert base["sizes"] == [1024, 2048] and base["seeds"] == [1, 2] and base["reps"] == 2
    assert base["bytes_per_token"] == 2 * 28 * 4 * (3584 // 28) * 2  # K and V, every layer, bf16


class _FilesPerStep:
    """An engine whose every step publishes one more chunk file, up to `limit` (a tier that stops storing)."""

    def __init__(self, root, limit: int) -> None:
        self.root, self.limit, self.steps = root, limit, 0

    def generate(self, tokens):
        self.steps += 1
        if self.steps <= self.limit:
            (self.root / f"{self.steps}.kvfs").write_bytes(b"x")
        return tokens, 0.0, 0.0


def test_waiting_for_stores_ends_when_all_are_there_or_when_they_stop_coming(tmp_path):
    engine = _FilesPerStep(tmp_path, limit=100)
    assert tiered.wait_for_files(engine, str(tmp_path), expected=3)[0] == 3 and engine.steps == 3
    for f in tmp_path.iterdir():
        f.unlink()
    stuck = _FilesPerStep(tmp_path, limit=2)  # 2 of 5 stored, then nothing: no wait until the deadline
    files, waited = tiered.wait_for_files(stuck, str(tmp_path), expected=5, timeout=60.0, stall_s=0.6)
    assert files == 2 and waited < 5.0


def test_rounds_rotate_the_modes_so_that_none_always_starts_first():
    modes = ["cpu", "kvfs", "fs"]
    orders = [tiered.round_order(modes, r) for r in range(4)]
    assert orders == [
        ["cpu", "kvfs", "fs"],
        ["kvfs", "fs", "cpu"],
        ["fs", "cpu", "kvfs"],
        ["cpu", "kvfs", "fs"],
    ]
    assert {o[0] for o in orders[:3]} == set(modes)


def test_rounds_pair_each_local_hit_with_the_cpu_tier_of_its_own_round():
    results = _results(cross_kvfs=0.40)  # round 1: cpu 0.20, kvfs 0.21, fs 0.22 (medians)
    second = _results(cross_kvfs=0.40)["modes"]
    second["cpu"]["writer"]["prompts"][0]["hits"][0]["ttft_s"] = (
        0.30  # round 2's CPU tier alone: slower engine
    )
    third = _results(cross_kvfs=0.40)["modes"]
    del third["cpu"]  # a round without the CPU tier alone pairs nothing
    results["rounds"] = [second, third]
    ratios = tiered.local_ratios(results)
    assert ratios[("kvfs", 32768)] == pytest.approx([0.21 / 0.20, 0.21 / 0.30])
    assert ratios[("fs", 32768)] == pytest.approx([0.22 / 0.20, 0.22 / 0.30])
    assert ("cpu", 32768) not in ratios
    table = tiered.format_rounds(results)
    kvfs_line = next(line for line in table.splitlines() if line.startswith("| KvfsTier"))
    assert "| 1.05, 0.70 |" in kvfs_line and kvfs_line.endswith(
        "| 0.87× |"
    )  # median of the two rounds (0.875, under)
    assert tiered.format_rounds(_results(cross_kvfs=0.40)) == ""  # one round: the main table says it all


def test_an_engine_that_failed_in_a_later_round_is_named_with_its_round():
    results = _results(cross_kvfs=0.40)
    later = _results(cross_kvfs=0.40)["modes"]
    later["kvfs"]["writer"] = {"error": "RuntimeError('oom')"}
    results["rounds"] = [later]
    assert tiered.phase_errors(results) == ["kvfs writer, round 2: RuntimeError('oom')"]


def test_rounds_must_be_positive():
    assert tiered.parse_args(["--rounds", "3"]).rounds == 3
    assert tiered.parse_args([]).rounds == 1
    with pytest.raises(SystemExit):
        tiered.parse_args(["--rounds", "0"])


def test_main_runs_each_round_in_its_rotated_order_and_the_readers_in_the_first_only(
    tmp_path, monkeypatch, capsys
):
    """The orchestration without engines: `run_child` stands in for the engine processes (each a real vLLM on
    the GPU machine), recording what it was asked to run and answering as a writer or reader does."""
    import json

    calls: list[tuple[str, str]] = []

    def engine(args, spec, work, module):  # type: ignore[no-untyped-def]
        calls.append((spec["phase"], spec["mode"]))
        assert module == tiered.MODULE and os.path.isdir(spec["root"])
        if spec["phase"] == "tiered-reader":
            return {
                "prompts": [{"tokens": 32768, "first_ttft_s": 0.4, "again_ttft_s": 0.2, "tokens_equal": True}]
            }
        local = 0.2 if spec["mode"] == "cpu" else 0.21
        hit = {"variant": "local", "ttft_s": local, "tokens_equal": True}
        prompt = {"tokens": 32768, "cold_ttft_s": 3.0, "chunks": 128, "ref_tokens": [1, 2], "hits": [hit]}
        return {"prompts": [prompt]}

    monkeypatch.setattr(tiered, "run_child", engine)
    out = tmp_path / "out.json"
    argv = ["--modes", "cpu,kvfs", "--prompts", "32k", "--rounds", "3", "--root", str(tmp_path / "root")]
    assert tiered.main([*argv, "--json", str(out)]) == 0
    assert calls == [
        ("tiered-writer", "cpu"), ("tiered-writer", "kvfs"), ("tiered-reader", "kvfs"),  # round 1
        ("tiered-writer", "kvfs"), ("tiered-writer", "cpu"),  # round 2, rotated, no reader
        ("tiered-writer", "cpu"), ("tiered-writer", "kvfs"),  # round 3
    ]  # fmt: skip
    saved = json.loads(out.read_text())
    assert set(saved["modes"]) == {"cpu", "kvfs"} and "reader" in saved["modes"]["kvfs"]
    assert [set(r) for r in saved["rounds"]] == [{"cpu", "kvfs"}, {"cpu", "kvfs"}]
    assert tiered.local_ratios(saved)[("kvfs", 32768)] == pytest.approx([1.05, 1.05, 1.05])
    assert "round by round" in capsys.readouterr().out
    assert os.listdir(tmp_path / "root") == []  # each mode's root removed after its engines
