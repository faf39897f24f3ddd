"""The engine image's entrypoint empties the multiprocess metrics directory, and the connector's metrics then
reach vLLM's /metrics from other processes (what PROMETHEUS_MULTIPROC_DIR in the engine Deployment is for)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from manifest_render import REPO

ENTRYPOINT = REPO / "docker" / "engine-entrypoint.sh"


def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )


def test_entrypoint_removes_only_the_previous_runs_metric_files_then_execs(tmp_path: Path) -> None:
    metrics = tmp_path / "prom"
    (metrics / "sub").mkdir(parents=True)
    for name in ("counter_123.db", "gauge_all_456.db", "notes.txt", "sub/counter_9.db"):
        (metrics / name).write_text("x")
    outside = tmp_path / "counter_1.db"
    outside.write_text("x")
    out = run_entrypoint(
        {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}, "sh", "-c", 'echo "$0 $1"; exit 7', "a", "b"
    )
    assert out.returncode == 7 and out.stdout.strip() == "a b"
    assert sorted(str(p.relative_to(metrics)) for p in metrics.rglob("*")) == [
        "notes.txt",
        "sub",
        "sub/counter_9.db",
    ]
    assert outside.exists()


def test_entrypoint_creates_the_directory_and_works_without_it(tmp_path: Path) -> None:
    metrics = tmp_path / "new" / "prom"
    assert run_entrypoint({"PROMETHEUS_MULTIPROC_DIR": str(metrics)}, "true").returncode == 0
    assert metrics.is_dir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        ["sh", str(ENTRYPOINT), "echo", "ok"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.stdout.strip() == "ok"


CHILD = """
from connector import metrics
metrics.STORES.labels("stored").inc(3)
metrics.LOAD_MISSES.labels("checksum_mismatch").inc()
metrics.QUEUED_STORES.set(5)
"""

SERVER = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)  # what vLLM's API server does with PROMETHEUS_MULTIPROC_DIR set
print(generate_latest(registry).decode())
"""


def test_connector_metrics_from_other_processes_reach_the_serving_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    for _ in range(2):  # two worker processes
        subprocess.run([sys.executable, "-c", CHILD], check=True, env=env, cwd=REPO, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", SERVER], check=True, env=env, capture_output=True, text=True, timeout=60
    )
    lines = out.stdout.splitlines()
    assert 'kvfs_connector_stores_total{outcome="stored"} 6.0' in lines
    assert 'kvfs_connector_load_misses_total{reason="checksum_mismatch"} 2.0' in lines
    assert (
        sum(1 for ln in lines if ln.startswith("kvfs_connector_queued_stores{")) == 2
    )  # one series per process
