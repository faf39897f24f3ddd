"""tools/gpu/metrics_check.py without a GPU: what it reads from /metrics, the server's command line, and a server
that dies before it is healthy (here: vLLM finds no device) reported as an error instead of a hang."""

from __future__ import annotations

import json

from tools.gpu import metrics_check as mc

METRICS = """# HELP kvfs_connector_stores_total Stores by outcome.
# TYPE kvfs_connector_stores_total counter
kvfs_connector_stores_total{outcome="stored"} 4.0
kvfs_connector_stores_total{outcome="dropped"} 0.0
kvfs_connector_load_bytes_total 0.0
vllm:num_requests_running{engine="0"} 0.0
kvfs_block_writes_total 3.0
"""


def test_kvfs_series_and_summary():
    series = mc.kvfs_series(METRICS)
    assert series == {
        'kvfs_connector_stores_total{outcome="stored"}': 4.0,
        'kvfs_connector_stores_total{outcome="dropped"}': 0.0,
        "kvfs_connector_load_bytes_total": 0.0,
    }
    assert mc.summary(series) == {
        "series": 3,
        "names": ["kvfs_connector_load_bytes_total", "kvfs_connector_stores_total"],
        "stored": 4.0,
    }
    assert mc.summary({}) == {"series": 0, "names": [], "stored": 0}


def test_serve_command_carries_the_kvfs_connector():
    cmd = mc.serve_command("/m", 8000, "/dev/shm/r")
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "/m"]
    for flag in ("--load-format", "--skip-tokenizer-init", "--enforce-eager", "--attention-backend"):
        assert flag in cmd
    ktc = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert ktc["kv_connector"] == "KvfsOffloadingConnector"
    assert ktc["kv_connector_extra_config"]["kvfs_root"] == "/dev/shm/r"
    assert mc.PROMPT_TOKENS // mc.CHUNK_TOKENS == 4


def test_a_server_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "serve_command", lambda *a: ["python3", "-c", "import sys; sys.exit(3)"])
    got = mc.check("noenv", 8399, str(tmp_path), startup_s=60)
    assert got["error"] == "vllm serve exited 3 before it was healthy" and got["files_stored"] == 0
    assert "series" not in got


def test_plugin_mode_wires_the_connector_by_entry_point_not_command_line(tmp_path):
    """Mode `plugin` is the kvfs-engine component's wiring: no --kv-transfer-config on the command line, and
    kvfs's vllm.general_plugins entry point found by the same lookup vLLM's plugin loader uses."""
    import subprocess
    import sys

    assert "--kv-transfer-config" not in mc.serve_command("/m", 8000, None)
    mc.write_plugin_entry_point(str(tmp_path))
    probe = (
        "from importlib.metadata import entry_points; "
        "print([e.value for e in entry_points(group='vllm.general_plugins') if e.name == 'kvfs'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "connector.plugin:register" in out.stdout
