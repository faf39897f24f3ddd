"""Engine-side kvfs metrics reach vLLM's /metrics on an engine wired by the kvfs-engine component.

vLLM sets PROMETHEUS_MULTIPROC_DIR itself only when api_server_count > 1 (vllm/entrypoints/cli/serve.py), but
the connector counts in engine-core and worker processes. The component sets it (on an emptyDir) and kvfs'
plugin removes the previous run's files when `vllm serve` starts. Here the component's environment runs the way a
pod runs it: a process named `vllm` registers the plugin, starts a child with multiprocessing's spawn (as vLLM
starts its engine core) that counts a store, and builds its registry with vLLM's own get_prometheus_registry().
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from manifest_render import REPO
from test_engine_wiring import SHAPES, render

SERVER = """
import multiprocessing, os, sys
import connector.plugin as plugin
plugin.register()  # what vLLM's plugin loader does in process 0, before any engine process exists


def engine_core():
    from connector import metrics
    metrics.STORES.labels("stored").inc(3)


if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=engine_core)
    child.start()
    child.join()
    from prometheus_client import generate_latest
    from vllm.v1.metrics.prometheus import get_prometheus_registry
    print(generate_latest(get_prometheus_registry()).decode())
"""

PREVIOUS_RUN = """
from connector import metrics
metrics.STORES.labels("stored").inc(1000)
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_a_child_process_counter_reaches_vllms_registry_and_a_previous_run_does_not(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    (dep,) = render(tmp_path, SHAPES["command-only"][0])
    env_list = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    pod_env = {e["name"]: e["value"] for e in env_list}
    assert "PROMETHEUS_MULTIPROC_DIR" in pod_env, (
        "the component leaves /metrics without the engine's counters"
    )
    metrics_dir = tmp_path / "prom"  # the emptyDir, here
    metrics_dir.mkdir()
    env = {
        **os.environ,
        **pod_env,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "KVFS_CONNECTOR_ROOT": str(tmp_path / "kv"),
        "PYTHONPATH": str(REPO),
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    # A previous container run in the same pod left its files in the emptyDir.
    subprocess.run([sys.executable, "-c", PREVIOUS_RUN], check=True, env=env, cwd=REPO, timeout=120)
    assert list(metrics_dir.glob("*.db"))
    server = tmp_path / "bin" / "vllm"  # process 0 of `vllm serve` is the `vllm` console script
    server.parent.mkdir()
    server.write_text(SERVER)
    out = subprocess.run(
        [sys.executable, str(server)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    lines = out.stdout.splitlines()
    assert 'kvfs_connector_stores_total{outcome="stored"} 3.0' in lines, out.stdout[-2000:]
