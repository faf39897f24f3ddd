"""GPU check: a real `vllm serve` wired as the kvfs-engine component wires it shows kvfs_connector_* on /metrics.

Starts `vllm serve` (dummy weights of a small Llama shape, no tokenizer, Triton attention, eager) with the
component's environment only -- KVFS_CONNECTOR_ROOT, PYTHONHASHSEED, PROMETHEUS_MULTIPROC_DIR -- and no
--kv-transfer-config: kvfs' vLLM plugin (registered through a `vllm.general_plugins` entry point written to a
temporary directory on PYTHONPATH, as `pip install` of kvfs would) must enable the connector. Sends one request
long enough to fill block files, then reads /metrics from the API-server process and prints every kvfs_* line.
Exit 0 when kvfs_connector_stores_total{outcome="stored"} > 0 (the other kvfs_* series are printed too).

    python3 tools/gpu/metrics_check.py [--port 8765] [--json out.json]

Run on the GPU machine after the vLLM bundle is installed (../shared/gpu/README.md), from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A small Llama: fast to start with dummy weights, 256-token kvfs blocks still span many GPU blocks.
MODEL_CONFIG = {
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
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def write_plugin_entry_point(where: Path) -> None:
    """What `pip install` of kvfs registers: the vllm.general_plugins entry point (kvfs is on PYTHONPATH here)."""
    dist = where / "kvfs_plugin_check-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvfs-plugin-check\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\nkvfs = connector.plugin:register\n")


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kvfs-metrics-check-"))
    model, root, prom, site = work / "model", work / "kv", work / "prom", work / "site"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(MODEL_CONFIG))
    root.mkdir()
    write_plugin_entry_point(site)
    env = {
        **os.environ,
        "KVFS_CONNECTOR_ROOT": str(root),
        "PYTHONHASHSEED": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "VLLM_USE_FLASHINFER_SAMPLER": "0",
    }
    vllm = shutil.which("vllm") or "vllm"
    cmd = [
        vllm, "serve", str(model), "--port", str(args.port), "--load-format", "dummy",
        "--skip-tokenizer-init", "--enforce-eager", "--attention-backend", "TRITON_ATTN",
        "--max-model-len", "4096", "--gpu-memory-utilization", "0.5",
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    log = open(work / "vllm.log", "w")  # noqa: SIM115 -- lives as long as the server
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    result: dict[str, object] = {"ok": False}
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited {server.returncode}")
            try:
                get(base + "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("vllm serve did not become healthy") from None
                time.sleep(2)
        started = time.monotonic()
        body = {"model": str(model), "prompt": list(range(100, 100 + 1100)), "max_tokens": 4}
        req = urllib.request.Request(
            base + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            result["usage"] = json.load(resp).get("usage")
        result["request_s"] = round(time.monotonic() - started, 3)
        stored = 0.0
        for _ in range(30):  # stores finish after the response
            text = get(base + "/metrics")
            m = re.search(r'^kvfs_connector_stores_total\{outcome="stored"\} (\S+)$', text, re.M)
            stored = float(m.group(1)) if m else 0.0
            if stored > 0:
                break
            time.sleep(1)
        kvfs_lines = [ln for ln in text.splitlines() if ln.startswith("kvfs_")]
        for ln in kvfs_lines:
            print(ln)
        families = sorted({ln.split("{")[0].split(" ")[0] for ln in kvfs_lines})
        result.update(
            stored=stored,
            kvfs_series=len(kvfs_lines),
            families=families,
            block_files=sum(1 for p in root.rglob("*") if p.is_file() and ".kvfs" not in p.parts),
            ok=stored > 0,
        )
    except Exception as exc:  # noqa: BLE001 -- reported with the server's log tail
        result["error"] = str(exc)
        log.flush()
        print((work / "vllm.log").read_text()[-4000:], file=sys.stderr)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
