"""The catalog and scan benchmarks (and the `python -m tools.bench` runner) still run, at toy sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_scan_bench_small(tmp_path: Path) -> None:
    proc = run("tools.bench.scan", "--files", "300", "--runs", "1", "--dir", str(tmp_path / "tree"))
    assert proc.returncode == 0, proc.stderr
    assert "RATIO walk/find" in proc.stdout and "scan_tree, rescan" in proc.stdout
    assert (tmp_path / "tree.complete").read_text() == "300"
    # Block files only: the root's `.kvfs/` metadata directory (root-id, journals) matches "*.kvfs" too.
    blocks = [p for pattern in ("*.kvfs", "*.bin") for p in (tmp_path / "tree").rglob(pattern) if p.is_file()]
    assert len(blocks) == 300


def test_catalog_bench_small(tmp_path: Path) -> None:
    proc = run("tools.bench.catalog", "--rows", "3000", "--runs", "1", "--tmp", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "RATIO upsert/faster raw baseline" in proc.stdout and "usage()" in proc.stdout


def test_bench_runner_lists_and_rejects() -> None:
    listed = run("tools.bench", "--list")
    assert listed.returncode == 0
    assert {"catalog", "scan"} <= set(listed.stdout.split())
    bad = run("tools.bench", "--only", "nope")
    assert bad.returncode == 2 and "no benchmark module named nope" in bad.stderr


def test_policy_bench_small_runs_the_default_policy() -> None:
    proc = run(
        "tools.bench.policy", "--rows", "6000", "--runs", "1", "--evict", "0.1", "--policies", "lru,prefix"
    )
    assert proc.returncode == 0, proc.stderr
    assert "prefix pass" in proc.stdout and "prefix first pass" in proc.stdout and "lru pass" in proc.stdout


def test_replay_bench_small_checks_both_replays_agree(tmp_path: Path) -> None:
    from tools.tracegen import generate, write_trace

    trace = tmp_path / "chat.jsonl"
    with trace.open("w") as fh:
        write_trace(generate("chat", requests=150, seed=2), fh)
    proc = run("tools.bench.replay", "--trace", str(trace), "--runs", "1", "--capacity", "0.1")
    # rc 1 is allowed here (a 150-request trace need not be 10x faster); a mismatch is not.
    assert "MISMATCH" not in proc.stderr and "RATIO catalog/fast" in proc.stdout, proc.stderr


def test_branching_bench_small(tmp_path: Path) -> None:
    proc = run("tools.bench.branching", "--siblings", "50,200", "--runs", "2", "--tmp", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "50 siblings" in proc.stdout and "200 siblings" in proc.stdout and "per sibling" in proc.stdout
