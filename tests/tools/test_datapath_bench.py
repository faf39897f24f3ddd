"""The GPU data-path scripts on CPU tensors: the benchmark's dry run reports every figure it
promises beside its baselines, so `make bench-gpu` does not rot between GPU sessions."""

from __future__ import annotations

import json

import pytest

from tools.datapath import bench


@pytest.mark.slow
def test_cpu_dry_run_reports_kvfs_beside_its_baselines(tmp_path) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--cpu",
            "--targets",
            "shm",
            "--threads",
            "1",
            "--files",
            "2",
            "--reps",
            "1",
            "--tree-files",
            "200",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads(out.read_text())
    (row,) = results["rows"]
    for key in ("store", "load", "raw_write", "raw_read", "naive_store", "host_memcpy", "staging_mib"):
        assert row[key] > 0, key
    # One repetition and no pinned-copy limit on CPU: the ratio is exactly kvfs over raw of that repetition.
    assert row["store_ratio"] == pytest.approx(row["store"] / row["raw_write"], rel=1e-9)
    assert row["load_ratio"] == pytest.approx(row["load"] / row["raw_read"], rel=1e-9)
    assert results["cuda_graphs"] is False and results["device_checksums"] is False
    assert results["scheduler"]["tree_files"] == 200 and results["scheduler"]["warm_step_us_median"] > 0


@pytest.mark.slow
def test_gpu_check_passes_on_cpu_tensors(capsys) -> None:
    """The GPU check's bit-exact round trips and failure injections, run on CPU tensors (no streams, no device
    hashing): the script CI cannot run on a GPU still runs, and every check it makes holds on the CPU path."""
    from tools.datapath import gpu_check

    assert gpu_check.main(["--cpu"]) == 0  # scratch under /dev/shm, removed afterwards
    out = capsys.readouterr().out
    assert " 0 failed" in out and "FAILED" not in out
    assert "two-slot pipeline (torch): bit flip after capture -> reported miss" in out
