"""The end-to-end benchmark's engine side, shared by its phases (`tools/e2e/main.py`, `tools/e2e/trace.py`):
a vLLM engine with the kvfs connector, vLLM's CPU tier or none; a hit measured through the connector's metrics;
the evictor started and stopped beside it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kvfs.procs import stop_gracefully

CHUNK_TOKENS = 256  # tokens per kvfs file and CPU-tier block


DECODE_TOKENS = 8  # greedy tokens compared between recompute and hit


def kv_bytes_per_token(model: Mapping[str, Any]) -> int:
    """K and V of every layer, bf16."""
    head_dim = model.get("head_dim") or model["hidden_size"] // model["num_attention_heads"]
    return 2 * model["num_hidden_layers"] * model["num_key_value_heads"] * head_dim * 2


def prompt_tokens(n: int, seed: int, vocab: int) -> list[int]:
    """A deterministic prompt of n token ids; prompts of different seeds share no prefix."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(1000, vocab - 1000) for _ in range(n)]


def metric_samples() -> dict[str, float]:
    from prometheus_client import REGISTRY

    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("kvfs_"):
            continue
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" in s.labels:
                continue
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def probe_worker(worker: Any, idle_wait_s: float | None = None) -> dict[str, Any]:
    """Runs inside the engine's worker (collective_rpc): kvfs metrics, pool state; optionally sets the idle-step
    wait of both sides (the scheduler shares this process under the single-GPU executor)."""
    import gc

    out: dict[str, Any] = {"metrics": metric_samples(), "pending_jobs": 0, "unsubmitted_stores": 0}
    try:
        from vllm.distributed.kv_transfer import get_kv_transfer_group

        cw = get_kv_transfer_group().connector_worker
        out["unsubmitted_stores"] = len(getattr(cw, "_unsubmitted_store_jobs", []) or [])
        kw = getattr(cw, "worker", None)
        pool = getattr(kw, "pool", None)
        if pool is not None:
            out["pending_jobs"] = pool.pending_jobs()
            out["threads"] = pool.threads
            out["store_gbps"] = pool.store_bandwidth() / 1e9
            out["captured_graphs"] = pool.captured_graphs()
            out["load_graphs_at_start"] = getattr(kw, "load_graphs", None)
        if idle_wait_s is not None and kw is not None and hasattr(kw, "idle_wait_s"):
            from connector.manager import KvfsManager

            kw.idle_wait_s = idle_wait_s
            for obj in gc.get_objects():
                if isinstance(obj, KvfsManager):
                    obj.idle_wait_s = idle_wait_s
    except Exception as exc:  # noqa: BLE001 - a probe must never break the engine
        out["probe_error"] = repr(exc)
    out["cpus"] = len(os.sched_getaffinity(0))
    return out


def merge_probes(probes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One view of all tensor-parallel ranks: counters and pending work summed (each rank moves its share of the
    KV, so load bytes add up to the whole model's), the rest from rank 0."""
    out = dict(probes[0])
    metrics: dict[str, float] = {}
    for probe in probes:
        for name, value in probe.get("metrics", {}).items():
            metrics[name] = metrics.get(name, 0.0) + value
    out["metrics"] = metrics
    for key in ("pending_jobs", "unsubmitted_stores"):
        out[key] = sum(int(p.get(key, 0)) for p in probes)
    out["ranks"] = len(probes)
    return out


def rank_files(root: str) -> dict[int, int]:
    """Block files per tensor-parallel rank under `root` (namespace directories `<namespace>_r<rank>`)."""
    counts: dict[int, int] = {}
    for entry in os.scandir(root) if os.path.isdir(root) else ():
        head, sep, rank = entry.name.rpartition("_r")
        if not (entry.is_dir(follow_symlinks=False) and sep and head and rank.isdigit()):
            continue
        n = sum(len([f for f in files if f.endswith(".kvfs")]) for _, _, files in os.walk(entry.path))
        counts[int(rank)] = counts.get(int(rank), 0) + n
    return counts


def metric_delta(after: Mapping[str, float], before: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix)}


def kv_transfer_args(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """`KVTransferConfig` arguments of an engine spec's connector: kvfs's, vLLM's CPU tier, the CPU tier with
    `spec["secondary_tiers"]` behind it ("tiered", vLLM 0.33: tools/e2e/tiered.py), or None (plain recompute,
    the reference for greedy tokens)."""
    if spec["connector"] == "kvfs":
        return {
            "kv_connector": "KvfsOffloadingConnector",
            "kv_connector_module_path": "connector.connector",
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {
                "spec_name": "KvfsOffloadingSpec",
                "spec_module_path": "connector.spec",
                "block_size": CHUNK_TOKENS,
                "kvfs_root": spec["root"],
                **spec.get("settings", {}),
            },
        }
    if spec["connector"] not in ("cpu", "tiered"):
        return None
    extra: dict[str, Any] = {
        "spec_name": "CPUOffloadingSpec",
        "cpu_bytes_to_use": spec["cpu_bytes"],
        "block_size": CHUNK_TOKENS,
    }
    if spec["connector"] == "tiered":
        extra.update(spec_name="TieringOffloadingSpec", secondary_tiers=spec["secondary_tiers"])
    return {"kv_connector": "OffloadingConnector", "kv_role": "kv_both", "kv_connector_extra_config": extra}


class Engine:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the probe is a callable
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import LLM
        from vllm.config import KVTransferConfig

        args = kv_transfer_args(spec)
        ktc = KVTransferConfig(**args) if args is not None else None
        started = time.perf_counter()
        self.llm = LLM(
            model=spec["model_dir"],
            load_format="dummy",
            skip_tokenizer_init=True,
            kv_transfer_config=ktc,
            attention_backend="TRITON_ATTN",
            enforce_eager=True,
            max_model_len=spec["max_model_len"],
            gpu_memory_utilization=spec["gpu_memory_utilization"],
            seed=0,
            tensor_parallel_size=spec.get("tp", 1),
            disable_log_stats=False,
            enable_prefix_caching=True,
        )
        self.startup_s = time.perf_counter() - started
        self.kvfs = spec["connector"] == "kvfs"

    def generate(self, tokens: list[int]) -> tuple[list[int], float, float]:
        """(greedy tokens, TTFT, wall time of the call); TTFT from vLLM's request stats, else the wall time."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=DECODE_TOKENS, ignore_eos=True, detokenize=False)
        started = time.perf_counter()
        out = self.llm.generate([{"prompt_token_ids": tokens}], params, use_tqdm=False)[0]
        wall = time.perf_counter() - started
        ttft = getattr(out.metrics, "first_token_latency", 0.0) if out.metrics is not None else 0.0
        return list(out.outputs[0].token_ids), float(ttft) if ttft else wall, wall

    def probe(self, idle_wait_s: float | None = None) -> dict[str, Any]:
        return merge_probes(self.llm.collective_rpc(probe_worker, kwargs={"idle_wait_s": idle_wait_s}))

    def settle(self, timeout: float = 300.0) -> float:
        """Wait until every store has been written (kvfs) or a fixed pause (CPU tier); vLLM submits a step's
        stores at the start of the next step, so a tiny request pushes one through when none is pending."""
        started = time.perf_counter()
        if not self.kvfs:
            self.generate([7] * 16)
            time.sleep(2.0)
            return time.perf_counter() - started
        deadline = started + timeout
        while time.perf_counter() < deadline:
            state = self.probe()
            if not state["pending_jobs"] and not state["unsubmitted_stores"]:
                # one more step, in case vLLM still holds store jobs that this worker has not seen yet
                self.generate([7] * 16)
                state = self.probe()
                if not state["pending_jobs"] and not state["unsubmitted_stores"]:
                    break
            elif state["unsubmitted_stores"] and not state["pending_jobs"]:
                self.generate([7] * 16)
            time.sleep(0.2)
        return time.perf_counter() - started


def measure_hit(
    engine: Engine, tokens: list[int], ref: list[int], variant: str, bytes_per_token: int
) -> dict[str, Any]:
    engine.llm.reset_prefix_cache()
    before = engine.probe()["metrics"] if engine.kvfs else {}
    out, ttft, wall = engine.generate(tokens)
    hit: dict[str, Any] = {
        "variant": variant,
        "ttft_s": ttft,
        "wall_s": wall,
        "tokens_equal": out == ref,
        "out": out,
    }
    if engine.kvfs:
        d = engine.probe()["metrics"]
        load_bytes = metric_delta(d, before, "kvfs_connector_load_bytes_total").get("{}", 0.0)
        job_s = metric_delta(d, before, "kvfs_connector_job_seconds_sum").get("{kind=load}", 0.0)
        io = metric_delta(d, before, "kvfs_connector_io_seconds_total")
        hit.update(
            load_bytes=load_bytes,
            loaded_tokens=int(load_bytes // bytes_per_token),
            load_job_s=job_s,
            load_gbps=load_bytes / job_s / 1e9 if job_s else None,
            read_thread_s=io.get("{op=load,stage=read}", 0.0),
            gpu_wait_thread_s=io.get("{op=load,stage=gpu_wait}", 0.0),
            lookups=metric_delta(d, before, "kvfs_connector_lookups_total"),
            misses=metric_delta(d, before, "kvfs_connector_load_misses_total"),
        )
    return hit


def du_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        if "/.kvfs" in dirpath:
            continue
        for f in files:
            with contextlib.suppress(OSError):  # deleted by the evictor meanwhile
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def start_evictor(
    spec: Mapping[str, Any], root: str, capacity: int
) -> tuple[subprocess.Popen[bytes], Any, str, str]:
    """`kvfs-evictor` on `root` with a fresh SQLite catalog, holding it to `capacity` bytes (defaults otherwise:
    the policy `spec["policy"]` or the evictor's default, watermarks 85/70%), enforcing every second; its log goes
    to the run's directory.
    Returns the process, its open log file, the log's path and the catalog's URL."""
    catalog = os.path.join(tempfile.mkdtemp(prefix="kvfs-e2e-cat-"), "catalog.db")
    log_path = os.path.join(spec["out_dir"], f"evictor-{spec['phase']}.log")
    cmd = [
        sys.executable, "-m", "evictor", "--root", root, "--catalog", f"sqlite:///{catalog}",
        "--max-bytes", str(capacity), "--min-age", "0s", "--enforce-interval", "1s", "--metrics-port", "0",
        "--journal-interval", "0.5s", *(["--policy", spec["policy"]] if spec.get("policy") else []),
    ]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115 - the evictor writes it while the engine runs
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    return proc, log, log_path, f"sqlite:///{catalog}"


def stop_evictor(evictor: subprocess.Popen[bytes], log: Any, log_path: str, res: dict[str, Any]) -> str:
    """Stop it (SIGTERM, then SIGKILL), put its error count and log tail into `res`; returns its whole log."""
    stop_gracefully(evictor, 30)
    log.close()
    with open(log_path) as f:
        text = f.read()
    res["evictor_errors"] = sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)
    res["evictor_log_tail"] = text.splitlines()[-15:]
    return text


def watermark_blocks(capacity: int) -> tuple[int, int]:
    """(high, low) in blocks under the evictor's default watermarks, as the phases run it: a pass starts above
    high and frees down to low; the replay models that as capacity `high` with a slack of `high - low`."""
    from evictor.settings import Settings

    defaults = Settings()
    return int(capacity * defaults.high_watermark / 100), int(capacity * defaults.low_watermark / 100)
