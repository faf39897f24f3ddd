"""Issue 21's check on the GPU machine: do the kvfs connector's metrics reach a real `vllm serve`'s /metrics?

The connector counts in vLLM's engine-core and worker processes; the API server answers /metrics from its own
registry, which sees other processes' samples only in Prometheus' multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`,
which vLLM itself sets only with more than one API server).  For each mode (the variable set to an empty
directory, and unset) this starts `vllm serve` on a small dummy-weight model with the kvfs connector, sends a
completion of prompt token ids long enough to store chunks, then a second request (vLLM submits a step's stores
in the next step), reads /metrics and records the `kvfs_connector_*` series it shows.  Mode `plugin` wires the
connector as the kvfs-engine component does: no `--kv-transfer-config`, only `KVFS_CONNECTOR_ROOT` and
`PROMETHEUS_MULTIPROC_DIR` in the environment, and kvfs's `vllm.general_plugins` entry point (written to a
directory on PYTHONPATH, as `pip install` registers it).

    python -m tools.gpu.metrics_check [--modes env,noenv,plugin] [--json out.json] [--port 8391]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.e2e.engine import CHUNK_TOKENS, kv_transfer_args

# A small Llama shape: the engine starts in well under a minute, and the KV path is the same as an 8B's.
MODEL: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_hidden_layers": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
PROMPT_TOKENS = 4 * CHUNK_TOKENS + 17  # four whole chunks stored, and a partial one that is not


def kv_transfer_config(root: str) -> dict[str, Any]:
    return kv_transfer_args({"connector": "kvfs", "root": root}) or {}


def serve_command(model_dir: str, port: int, root: str | None) -> list[str]:
    """`vllm serve` as the GPU machine runs it (vLLM 0.32 flags: dummy weights, no tokenizer, Triton attention);
    `root=None`: no --kv-transfer-config (the plugin wires the connector from the environment)."""
    wiring = [] if root is None else ["--kv-transfer-config", json.dumps(kv_transfer_config(root))]
    return [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model_dir,
        "--load-format", "dummy", "--skip-tokenizer-init", "--enforce-eager",
        "--attention-backend", "TRITON_ATTN", "--max-model-len", str(MODEL["max_position_embeddings"]),
        "--gpu-memory-utilization", "0.3", "--port", str(port), "--host", "127.0.0.1", *wiring,
    ]  # fmt: skip


def write_plugin_entry_point(where: str) -> None:
    """What `pip install` of kvfs registers: its `vllm.general_plugins` entry point (connector/plugin.py)."""
    dist = Path(where, "kvfs_plugin_check-0.0.0.dist-info")
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvfs-plugin-check\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\nkvfs = connector.plugin:register\n")


def kvfs_series(text: str, prefix: str = "kvfs_connector_") -> dict[str, float]:
    """The samples of /metrics whose name starts with `prefix` (comments left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def summary(series: Mapping[str, float]) -> dict[str, Any]:
    """What the check reports of one mode: how many kvfs_connector_* series, and the stored-chunk count."""
    stored = sum(
        v for k, v in series.items() if k.startswith("kvfs_connector_stores_total") and "stored" in k
    )
    names = sorted({k.split("{")[0] for k in series})
    return {"series": len(series), "names": names, "stored": stored}


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - localhost only
        return resp.status, resp.read().decode()


def _post(url: str, body: Mapping[str, Any], timeout: float = 120.0) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - localhost only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def check(mode: str, port: int, work: str, startup_s: float = 300.0) -> dict[str, Any]:
    """One server in `mode` ("env": PROMETHEUS_MULTIPROC_DIR set to an empty directory, "noenv": unset,
    "plugin": set, and the connector wired by the plugin from KVFS_CONNECTOR_ROOT alone)."""
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir, exist_ok=True)
    Path(model_dir, "config.json").write_text(json.dumps(MODEL))
    root = tempfile.mkdtemp(
        prefix=f"kvfs-metrics-{mode}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    env = os.environ.copy()
    env.update(VLLM_USE_FLASHINFER_SAMPLER="0", HF_HUB_OFFLINE="1")
    project = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH", "")]))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if mode in ("env", "plugin"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prom-", dir=work)
    if mode == "plugin":
        entry_points = os.path.join(work, "entry-points")
        write_plugin_entry_point(entry_points)
        env["PYTHONPATH"] = os.pathsep.join([entry_points, env["PYTHONPATH"]])
        env["KVFS_CONNECTOR_ROOT"] = root
    log_path = os.path.join(work, f"serve-{mode}.log")
    res: dict[str, Any] = {"mode": mode, "log": log_path}
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            serve_command(model_dir, port, None if mode == "plugin" else root), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            while time.perf_counter() - started < startup_s:
                if proc.poll() is not None:
                    res["error"] = f"vllm serve exited {proc.returncode} before it was healthy"
                    break
                with contextlib.suppress(OSError, urllib.error.URLError):
                    if _get(base + "/health")[0] == 200:
                        break
                time.sleep(1.0)
            else:
                res["error"] = "not healthy in time"
            res["startup_s"] = time.perf_counter() - started
            if "error" not in res:
                prompt = [1000 + (i * 7919) % 30000 for i in range(PROMPT_TOKENS)]
                body = {"model": model_dir, "prompt": prompt, "max_tokens": 4, "temperature": 0.0}
                res["completion_status"], text = _post(base + "/v1/completions", body)
                res["completion_body"] = text[:300]
                time.sleep(1.0)
                _post(
                    base + "/v1/completions", {**body, "prompt": [5] * 8}
                )  # the next step submits the stores
                time.sleep(3.0)
                status, metrics = _get(base + "/metrics", timeout=30)
                res["metrics_status"] = status
                series = kvfs_series(metrics)
                res.update(summary(series))
                res["sample"] = dict(list(series.items())[:12])
                res["vllm_series"] = sum(1 for line in metrics.splitlines() if line.startswith("vllm:"))
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    res["files_stored"] = sum(len([f for f in fs if f.endswith(".kvfs")]) for _, _, fs in os.walk(root))
    shutil.rmtree(root, ignore_errors=True)
    with open(log_path) as f:
        res["log_tail"] = f.read().splitlines()[-25:]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu.metrics_check", description=__doc__)
    p.add_argument("--modes", default="env,noenv", help="env (PROMETHEUS_MULTIPROC_DIR set), noenv, or both")
    p.add_argument("--port", type=int, default=8391)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("env", "noenv", "plugin") for m in modes):
        p.error(f"--modes takes env, noenv and/or plugin, not {args.modes!r}")
    work = tempfile.mkdtemp(prefix="kvfs-metrics-check-")
    results = []
    for i, mode in enumerate(modes):
        results.append(check(mode, args.port + i, work))
        r = results[-1]
        print(
            f"[metrics_check] {mode}: {r.get('error') or 'ok'}; completion {r.get('completion_status')}, "
            f"{r.get('series', 0)} kvfs_connector_* series, stored {r.get('stored')}, "
            f"{r.get('files_stored')} files on the root, {r.get('vllm_series')} vllm: series",
            flush=True,
        )
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
