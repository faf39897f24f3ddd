"""End-to-end benchmark: the kvfs connector inside a real vLLM engine on a GPU, beside vLLM's own CPU tier.

For one model shape (dummy weights) and prompt lengths, per root (/dev/shm and a local-disk directory):
  * writer engine (kvfs): recompute TTFT (cold), stores submitted / stored / dropped by reason, then kvfs hit
    TTFT in the same engine after `reset_prefix_cache` -- alternating the connector's idle-step wait on (the
    default) and off (before), repetition by repetition -- with the load's GB/s and where its thread time went;
  * reader engine (a second process, same root): hit TTFT from the writer's files, as another replica sees them;
  * vLLM's own CPU tier (`CPUOffloadingSpec`, one engine for the run): cold and hit TTFT of the same prompts;
  * optionally (`--evictor`): `kvfs-evictor` holds a fresh root to a third of what a multi-round request sequence
    needs while an engine serves it: errors, hit ratio, tokens against recompute, and what Belady and LRU would
    keep on the same sequence at the same capacity;
  * optionally (`--evictor-trace chat:150`): the same under a generated multi-turn trace (tools/e2e/trace.py).
With `--tensor-parallel-size N` every engine spans N GPUs: the probe sums the ranks' counters, the report counts
each rank's files (`<namespace>_r<rank>`), and the idle-wait variant reaches the workers only (the scheduler
then runs in vLLM's engine-core process).
Every hit's greedy tokens are compared with the recompute's (dummy weights are fixed by the seed).  Each engine
runs in its own process (`--child`); this parent imports no vLLM and prints ratios against the CPU tier and
recompute, all from one run.  For the GPU machine (recipe: ../shared/gpu/README.md); never part of CI, where the
pure parts (arguments, result maths, table) are tested.

With `--fresh-engines N` the writer phase runs N times, each in a new engine process on an emptied root with an
empty Triton cache (as on a fresh host, where kvfs's kernels compile during the first requests): stores and drops
per run.  After a writer's hits, `tools/e2e/hostlimit.py` reads the files the prompt stored with the pool's thread
count, raw into pinned memory and on to the GPU: the host's limit, printed beside the load GB/s.  The first hit
(files the cold run just wrote, read for the first time) is compared with the same read of fresh copies read
once, the later hits with the read of the same files again: the kernel reads a just-written file slower once.

    python -m tools.e2e [--model llama3-8b] [--prompts 8k,32k,64k,128k] [--roots shm,disk|none] [--evictor]
        [--evictor-trace WORKLOAD:REQUESTS] [--reps 3] [--fresh-engines 3] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.e2e.engine import (
    CHUNK_TOKENS,
    Engine,
    du_bytes,
    kv_bytes_per_token,
    measure_hit,
    metric_delta,
    prompt_tokens,
    rank_files,
    start_evictor,
    stop_evictor,
    watermark_blocks,
)

# Same-engine hit variants, alternated repetition by repetition: (name, idle-step wait on).  "before" lets vLLM's
# engine loop spin while the load runs, as before kvfs_idle_wait.
VARIANTS = (("default", True), ("before", False))

# Model shapes (dummy weights): attention layout is what the KV path sees.
MODELS: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_hidden_layers": 32,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "tie_word_embeddings": False,
    },
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "vocab_size": 152064,
        # Qwen2.5's documented long-context setting: YaRN x4 over 32k.
        "max_position_embeddings": 131072,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        "rms_norm_eps": 1e-6,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    },
}


def parse_prompt_sizes(text: str, max_model_len: int) -> list[int]:
    """ "8k,32k,131072" -> token counts; k = 1024.  A prompt leaves room for the decoded tokens and a margin
    (128k -> 130,048 tokens with a 131,072 context)."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        n = int(item[:-1]) * 1024 if item.endswith("k") else int(item)
        if n <= 0:
            raise argparse.ArgumentTypeError(f"prompt size must be positive: {item!r}")
        sizes.append(min(n, max_model_len - 1024))
    if not sizes:
        raise argparse.ArgumentTypeError("no prompt sizes given")
    return sizes


def add_engine_arguments(parser: argparse.ArgumentParser, *, prompts: str, child_timeout: float) -> None:
    """The arguments every engine benchmark of this package takes (this one, tools/e2e/tiered.py)."""
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    parser.add_argument("--prompts", default=prompts, help="prompt lengths (k = 1024 tokens)")
    parser.add_argument("--reps", type=int, default=3, help="hits per engine, prompt and variant (medians)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--child-timeout", type=float, default=child_timeout)
    parser.add_argument("--json", dest="json_out", help="write all results here (after every phase)")
    parser.add_argument("--markdown", help="write the tables here (markdown)")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def check_engine_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks `add_engine_arguments`' values; sets `args.prompt_sizes`."""
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    try:
        args.prompt_sizes = parse_prompt_sizes(args.prompts, MODELS[args.model]["max_position_embeddings"])
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(f"--prompts: {exc}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(p, prompts="8k,32k,64k,128k", child_timeout=900.0)
    p.add_argument("--roots", default="shm,disk", help="shm, disk, or both")
    p.add_argument("--shm-dir", default="/dev/shm/kvfs-e2e")
    p.add_argument("--disk-dir", default="/var/tmp/kvfs-e2e", help="a directory on local disk (not tmpfs)")
    p.add_argument("--no-cpu-tier", action="store_true", help="skip vLLM's CPU tier (no ratios against it)")
    p.add_argument("--no-reader", action="store_true", help="skip the second-engine reader")
    p.add_argument(
        "--fresh-engines",
        type=int,
        default=1,
        help="writer runs, each a new engine on an emptied root with an empty Triton cache (drops per run)",
    )
    p.add_argument("--no-host-limit", action="store_true", help="skip the raw-read limit after the hits")
    p.add_argument(
        "--reader-warmup",
        action="store_true",
        help="the second engine serves one short unrelated prompt before its first hit: the process's first "
        "request apart from kvfs's first hit",
    )
    p.add_argument(
        "--cold-reader",
        action="store_true",
        help="the second engine's first hit of each prompt from a cold page cache (its files written back and "
        "dropped first), beside the raw cold read of the same files (use with --roots disk)",
    )
    p.add_argument("--evictor", action="store_true", help="add the phase under kvfs-evictor")
    p.add_argument("--evictor-prompts", type=int, default=4, help="distinct prompts in the evictor phase")
    p.add_argument("--evictor-tokens", type=int, default=16384)
    p.add_argument("--evictor-rounds", type=int, default=3)
    p.add_argument("--evictor-fraction", type=float, default=1 / 3, help="capacity / bytes the prompts need")
    p.add_argument(
        "--evictor-trace",
        help="add the trace phase: WORKLOAD:REQUESTS of tools.tracegen (e.g. chat:150) under kvfs-evictor at "
        "--evictor-fraction of its unique blocks (tools/e2e/trace.py)",
    )
    p.add_argument(
        "--evictor-policy",
        help="the evictor's policy in the evictor phases (default: kvfs.policy.DEFAULT_POLICY)",
    )
    p.add_argument("--trace-seed", type=int, default=1)
    p.add_argument(
        "--check-every", type=int, default=10, help="trace phase: compare every Nth request's tokens"
    )
    p.add_argument("--setting", action="append", default=[], help="extra kvfs setting key=value (repeatable)")
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="GPUs per engine (each rank writes its own _r<rank>)",
    )
    args = p.parse_args(argv)
    args.roots = [r.strip() for r in args.roots.split(",") if r.strip()]
    bad = [r for r in args.roots if r not in ("shm", "disk")]
    if args.roots == ["none"]:  # only the evictor phases
        args.roots = []
    elif bad or not args.roots:
        p.error(f"--roots takes shm and/or disk (or none), not {args.roots}")
    if args.evictor_trace:
        from tools.e2e.trace import parse_trace

        try:
            args.evictor_trace = parse_trace(args.evictor_trace)
        except ValueError as exc:
            p.error(f"--evictor-trace: {exc}")
    if args.check_every <= 0:
        p.error("--check-every must be positive")
    if args.tensor_parallel_size <= 0:
        p.error("--tensor-parallel-size must be positive")
    if args.fresh_engines < 1:
        p.error("--fresh-engines must be >= 1")
    if not 0 < args.evictor_fraction < 1:
        p.error("--evictor-fraction must be between 0 and 1")
    if args.evictor_policy is not None:
        from kvfs.policy import available_policies

        if args.evictor_policy not in available_policies():
            p.error(
                f"--evictor-policy: unknown policy {args.evictor_policy!r} ({', '.join(available_policies())})"
            )
    check_engine_arguments(p, args)
    settings: dict[str, Any] = {}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("kvfs_"):
            p.error(f"--setting takes kvfs_key=value, not {item!r}")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    args.settings = settings
    return args


# ---- result maths (pure) ----


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class Row:
    """One prompt length of one root: the figures the table prints."""

    root: str
    tokens: int
    recompute_s: float | None
    hit_s: float | None  # kvfs hit, same engine, default settings (median)
    hit_before_s: float | None  # same, idle-step wait off (vLLM's engine loop spinning, as before)
    reader_s: float | None  # kvfs hit from a second engine (first sight)
    reader_again_s: float | None  # the second engine's later hits (median)
    cpu_hit_s: float | None
    stored: int
    chunks: int
    dropped: int
    load_gbps: float | None  # the later hits' loads (median), files read before
    tokens_equal: bool
    limit_gbps: float | None = None  # the host's raw read (+ copy to the GPU) of the same files, same threads
    first_load_gbps: float | None = None  # the first hit's load: files read for the first time since written
    first_limit_gbps: float | None = None  # the same limit on fresh copies of the files, each read once
    drops_per_run: tuple[int, ...] = ()  # --fresh-engines: dropped stores of each fresh engine

    @property
    def vs_cpu(self) -> float | None:
        return ratio(self.hit_s, self.cpu_hit_s)

    @property
    def before_vs_cpu(self) -> float | None:
        return ratio(self.hit_before_s, self.cpu_hit_s)

    @property
    def reader_vs_cpu(self) -> float | None:
        return ratio(self.reader_s, self.cpu_hit_s)

    @property
    def speedup(self) -> float | None:
        return ratio(self.recompute_s, self.hit_s)

    @property
    def vs_limit(self) -> float | None:
        return ratio(self.load_gbps, self.limit_gbps)

    @property
    def first_vs_limit(self) -> float | None:
        return ratio(self.first_load_gbps, self.first_limit_gbps)


def rows_of(results: Mapping[str, Any]) -> list[Row]:
    """Table rows from the children's results (see `_writer`, `_reader`, `_cpu_tier`)."""
    cpu = {p["tokens"]: p for p in results.get("cpu", {}).get("prompts", [])}
    rows = []
    from tools.e2e.hostlimit import first_limit_of, limit_of

    for root, phases in results.get("roots", {}).items():
        reader = {p["tokens"]: p for p in phases.get("reader", {}).get("prompts", [])}
        runs: dict[int, list[int]] = {}
        for run in phases.get("fresh", [phases.get("writer", {})]):
            for w in run.get("prompts", []):
                runs.setdefault(w["tokens"], []).append(int(w.get("stores", {}).get("dropped", 0)))
        for w in phases.get("writer", {}).get("prompts", []):
            n = w["tokens"]
            r, c = reader.get(n, {}), cpu.get(n, {})
            hits = w.get("hits", [])
            on = [h["ttft_s"] for h in hits if h["variant"] == "default"]
            off = [h["ttft_s"] for h in hits if h["variant"] == "before"]
            # Both variants load alike (the idle wait is the engine loop's); the first hit reads files that the
            # cold run just wrote, which the kernel reads slower once (hostlimit's `read_first`).
            loads = [h.get("load_gbps") for h in hits]
            equal = all(h["tokens_equal"] for h in hits) and r.get("tokens_equal", True)
            equal = equal and all(h["tokens_equal"] for h in c.get("hits", []))
            stores = w.get("stores", {})
            rows.append(
                Row(
                    root=root,
                    tokens=n,
                    recompute_s=w.get("cold_ttft_s"),
                    hit_s=median(on),
                    hit_before_s=median(off),
                    reader_s=r.get("first_ttft_s"),
                    reader_again_s=r.get("again_ttft_s"),
                    cpu_hit_s=median([h["ttft_s"] for h in c.get("hits", [])]),
                    stored=int(stores.get("stored", 0) + stores.get("exists", 0)),
                    chunks=n // CHUNK_TOKENS,
                    dropped=int(stores.get("dropped", 0)),
                    load_gbps=median([g for g in loads[1:] if g]),
                    tokens_equal=bool(equal),
                    limit_gbps=limit_of(w.get("host_limit") or {}),
                    first_load_gbps=loads[0] if loads else None,
                    first_limit_gbps=first_limit_of(w.get("host_limit") or {}),
                    drops_per_run=tuple(runs.get(n, [])) if len(phases.get("fresh", [])) > 1 else (),
                )
            )
    return rows


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def format_table(rows: Sequence[Row]) -> str:
    head = (
        "| root | prompt | recompute TTFT | kvfs hit | hit, idle wait off | second engine | 2nd engine, later "
        "| CPU tier hit | kvfs ÷ CPU | before ÷ CPU | 2nd engine ÷ CPU | recompute ÷ hit | stored "
        "| load GB/s, first hit / later | host limit GB/s, first read / later | load ÷ limit, first / later "
        "| tokens equal |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        lines.append(
            f"| {r.root} | {r.tokens:,} | {_fmt(r.recompute_s, '.2f', ' s')} | {_fmt(r.hit_s, '.3f', ' s')} "
            f"| {_fmt(r.hit_before_s, '.3f', ' s')} | {_fmt(r.reader_s, '.3f', ' s')} "
            f"| {_fmt(r.reader_again_s, '.3f', ' s')} | {_fmt(r.cpu_hit_s, '.3f', ' s')} | {_fmt(r.vs_cpu, '.2f', '×')} | {_fmt(r.before_vs_cpu, '.2f', '×')} "
            f"| {_fmt(r.reader_vs_cpu, '.2f', '×')} | {_fmt(r.speedup, '.1f', '×')} "
            f"| {r.stored}/{r.chunks}{f' ({r.dropped} dropped)' if r.dropped else ''} "
            f"| {_fmt(r.first_load_gbps, '.1f')} / {_fmt(r.load_gbps, '.1f')} "
            f"| {_fmt(r.first_limit_gbps, '.1f')} / {_fmt(r.limit_gbps, '.1f')} "
            f"| {_fmt(r.first_vs_limit, '.2f')} / {_fmt(r.vs_limit, '.2f')} "
            f"| {'yes' if r.tokens_equal else '**NO**'} |"
        )
    for r in rows:
        if r.drops_per_run:
            lines.append(
                f"\n{r.root} {r.tokens:,}: dropped stores per fresh engine {list(r.drops_per_run)} "
                f"of {r.chunks} chunks each"
            )
    return "\n".join(lines)


def format_evictor(ev: Mapping[str, Any]) -> str:
    if not ev or "error" in ev and "requests" not in ev:
        return f"evictor phase: {ev.get('error', 'not run')}" if ev else ""
    return (
        f"evictor phase: {ev['prompts']} prompts × {ev['tokens']:,} tokens × {ev['rounds']} rounds, capacity "
        f"{ev['capacity_bytes'] / 1e9:.2f} GB ({ev['capacity_chunks']} chunks = {ev['fraction']:.2f} of "
        f"{ev['needed_bytes'] / 1e9:.2f} GB); hit ratio {ev['hit_ratio']:.3f} (rounds 2+: "
        f"{ev['hit_ratio_after_first']:.3f}); on the same sequence Belady {ev['belady_hit_ratio']:.3f} "
        f"({ev.get('belady_watermarks_hit_ratio', 0.0):.3f} under the 85/70% watermarks), LRU "
        f"{ev['lru_hit_ratio']:.3f}; tokens equal to recompute: {'yes' if ev['tokens_equal'] else 'NO'}; "
        f"request errors {ev['request_errors']}, load misses {ev['load_misses']}, evictor errors "
        f"{ev['evictor_errors']}, peak usage {ev['peak_usage_ratio']:.2f}× capacity"
    )


# ---- the engines (child processes; vLLM imported only here) ----


def _per_prompt(
    spec: Mapping[str, Any],
    label: str,
    measure: Callable[[Any, list[int], list[int] | None], dict[str, Any]],
    engine: Any = None,
) -> dict[str, Any]:
    """One engine, each prompt measured in turn; a prompt that fails is recorded and the next one goes on."""
    engine = engine if engine is not None else Engine(spec)
    res: dict[str, Any] = {"startup_s": engine.startup_s, "prompts": []}
    if engine.kvfs:
        probe = engine.probe()
        res["threads"], res["cpus"] = probe.get("threads"), probe.get("cpus")
    refs = spec.get("refs") or [None] * len(spec["sizes"])
    for n, seed, ref in zip(spec["sizes"], spec["seeds"], refs, strict=True):
        entry: dict[str, Any] = {"tokens": n}
        try:
            entry.update(measure(engine, prompt_tokens(n, seed, spec["vocab"]), ref))
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next prompt
            entry["error"] = repr(exc)
        res["prompts"].append(entry)
        _progress(f"{label} {n}: {_brief(entry)}")
    return res


def _writer(spec: Mapping[str, Any], engine: Any = None) -> dict[str, Any]:
    """Cold (recompute) run and its stores, then same-engine hits alternating the VARIANTS."""

    def measure(engine: Any, tokens: list[int], _ref: list[int] | None) -> dict[str, Any]:
        before = engine.probe()["metrics"]
        files_before = set(block_files(spec["root"])) if spec.get("root") else set()
        ref, cold, _ = engine.generate(tokens)
        settle_s = engine.settle()
        after = engine.probe()
        stores = metric_delta(after["metrics"], before, "kvfs_connector_stores_total")
        io = metric_delta(after["metrics"], before, "kvfs_connector_io_seconds_total")
        hits = []
        for _ in range(spec["reps"]):
            for variant, wait in VARIANTS:
                engine.probe(idle_wait_s=spec["idle_wait_s"] if wait else 0.0)
                hits.append(measure_hit(engine, tokens, ref, variant, spec["bytes_per_token"]))
        engine.probe(idle_wait_s=spec["idle_wait_s"])
        limit: dict[str, Any] = {}
        if spec.get("host_limit") and spec.get("root"):
            files = sorted(set(block_files(spec["root"])) - files_before)
            limit = host_limit(files, int(after.get("threads") or 0))
        return {
            "files": sorted(set(block_files(spec["root"])) - files_before) if spec.get("root") else [],
            "host_limit": limit,
            "cold_ttft_s": cold,
            "settle_s": settle_s,
            "ref_tokens": ref,
            "stores": {k.split("=")[1].rstrip("}"): v for k, v in stores.items()},
            "dropped_by_reason": metric_delta(
                after["metrics"], before, "kvfs_connector_stores_dropped_total"
            ),
            "store_gbps": after.get("store_gbps"),
            "store_write_thread_s": io.get("{op=store,stage=write}", 0.0),
            "hits": hits,
        }

    return _per_prompt(spec, f"writer {spec['root_name']}", measure, engine)


def block_files(root: str) -> list[str]:
    """Every block file under `root` (a writer's prompt stored the ones that appear during its cold run)."""
    return [
        os.path.join(d, f)
        for d, _dirs, files in os.walk(root)
        if "/.kvfs" not in d
        for f in files
        if f.endswith(".kvfs")
    ]


def host_limit(files: Sequence[str], threads: int, *, cold: bool = False) -> dict[str, Any]:
    """tools/e2e/hostlimit.py on the prompt's files with the pool's threads (`cold`: its cold raw read, from the
    device); an error is recorded, not raised."""
    try:
        import torch

        from tools.e2e import hostlimit

        device = torch.device("cuda", 0) if torch.cuda.is_available() else None
        probe = hostlimit.measure_cold if cold else hostlimit.measure
        return probe(files, threads, device=device)
    except Exception as exc:  # noqa: BLE001 - a failed probe must not lose the phase's figures
        return {"error": repr(exc)}


def format_cold(results: Mapping[str, Any]) -> str:
    """One line per prompt the second engine hit from a cold page cache: its hit and load against the raw cold
    read of the same files with the same threads."""
    lines = []
    for root, phases in results.get("roots", {}).items():
        for p in phases.get("reader", {}).get("prompts", []):
            if not p.get("cold"):
                continue
            first, lim = p.get("first", {}), p.get("cold_limit", {})
            limit = lim.get("cold_read_h2d") or lim.get("cold_read")
            load = first.get("load_gbps")
            lines.append(
                f"{root} {p['tokens']:,}, cold page cache: second engine's first hit {_fmt(p.get('first_ttft_s'), '.3f', ' s')}"
                f" (later {_fmt(p.get('again_ttft_s'), '.3f', ' s')}), load {_fmt(load, '.2f')} GB/s; raw cold read of"
                f" the same files {_fmt(lim.get('cold_read'), '.2f')} GB/s, +H2D {_fmt(lim.get('cold_read_h2d'), '.2f')}"
                f" GB/s; load ÷ limit {_fmt(ratio(load, limit), '.2f')}"
            )
    return "\n".join(lines)


# The reader's warm-up prompt (`--reader-warmup`): a few chunks under a seed no measured prompt uses.
WARMUP_TOKENS, WARMUP_SEED = 1024, 999


def format_reader_warmup(results: Mapping[str, Any]) -> str:
    """With --reader-warmup: the second engine's own first request beside its first hit and its later ones."""
    lines = []
    for root, phases in results.get("roots", {}).items():
        for p in phases.get("reader", {}).get("prompts", []):
            if "warmup_ttft_s" in p:
                lines.append(
                    f"{root}: second engine's warm-up request ({WARMUP_TOKENS:,} tokens of its own) "
                    f"{_fmt(p['warmup_ttft_s'], '.3f', ' s')}, then its first hit of {p['tokens']:,} tokens "
                    f"{_fmt(p.get('first_ttft_s'), '.3f', ' s')} (later {_fmt(p.get('again_ttft_s'), '.3f', ' s')})"
                )
    return "\n".join(lines)


def _reader(spec: Mapping[str, Any], engine: Any = None) -> dict[str, Any]:
    """A second engine on the writer's root: its first hit (lookups unknown: RETRY once), then repeats.  With
    `warmup`, the engine first serves one short prompt of its own, so that the first hit is no longer the
    process's first request."""
    warm_up = bool(spec.get("warmup"))  # before the first prompt only

    def measure(engine: Any, tokens: list[int], ref: list[int] | None) -> dict[str, Any]:
        nonlocal warm_up
        extra: dict[str, Any] = {}
        if warm_up:
            warm_up = False
            _out, extra["warmup_ttft_s"], _wall = engine.generate(
                prompt_tokens(WARMUP_TOKENS, WARMUP_SEED, spec["vocab"])
            )
        files = (spec.get("prompt_files") or {}).get(str(len(tokens)), [])
        cold = bool(spec.get("cold") and files)
        if cold:
            from tools.e2e.hostlimit import drop_from_page_cache

            drop_from_page_cache(files)
        first = measure_hit(engine, tokens, ref, "first", spec["bytes_per_token"])
        again = [
            measure_hit(engine, tokens, ref, "again", spec["bytes_per_token"]) for _ in range(spec["reps"])
        ]
        if cold:
            extra["cold_limit"] = host_limit(files, int(engine.probe().get("threads") or 0), cold=True)
        return {
            **extra,
            "cold": cold,
            "first_ttft_s": first["ttft_s"],
            "first": first,
            "again_ttft_s": median([h["ttft_s"] for h in again]),
            "tokens_equal": first["tokens_equal"] and all(h["tokens_equal"] for h in again),
        }

    return _per_prompt(spec, f"reader {spec['root_name']}", measure, engine)


def _cpu_tier(spec: Mapping[str, Any], engine: Any = None) -> dict[str, Any]:
    """vLLM's CPU tier: cold run (stores into pinned CPU memory), then hits."""

    def measure(engine: Any, tokens: list[int], ref: list[int] | None) -> dict[str, Any]:
        out, cold, _ = engine.generate(tokens)
        engine.settle()
        ref = ref if ref is not None else out
        hits = [measure_hit(engine, tokens, ref, "cpu", spec["bytes_per_token"]) for _ in range(spec["reps"])]
        return {"cold_ttft_s": cold, "cold_equal": out == ref, "hits": hits}

    return _per_prompt(spec, "cpu tier", measure, engine)


def _evictor_phase(spec: Mapping[str, Any]) -> dict[str, Any]:
    """kvfs-evictor holds a fresh root to a fraction of what the request sequence needs while one engine serves
    `rounds` rounds of `prompts` distinct prompts (GPU prefix cache reset before each request, so only kvfs
    serves); every request's tokens are compared with its recompute (round 1)."""
    root, n, k, rounds = spec["root"], spec["tokens"], spec["prompts"], spec["rounds"]
    chunks_per_prompt = n // CHUNK_TOKENS
    file_bytes = CHUNK_TOKENS * spec["bytes_per_token"]
    needed = k * chunks_per_prompt * file_bytes
    capacity = int(needed * spec["fraction"])
    evictor, log, log_path, _catalog = start_evictor(spec, root, capacity)
    res: dict[str, Any] = {
        "prompts": k, "tokens": n, "rounds": rounds, "capacity_bytes": capacity, "needed_bytes": needed,
        "capacity_chunks": capacity // file_bytes, "fraction": spec["fraction"], "requests": [],
    }  # fmt: skip
    try:
        engine = Engine(spec)
        prompts = [prompt_tokens(n, 1000 + i, spec["vocab"]) for i in range(k)]
        refs: dict[int, list[int]] = {}
        peak = 0
        errors = 0
        for r in range(rounds):
            for i, tokens in enumerate(prompts):
                try:
                    hit = measure_hit(engine, tokens, refs.get(i, []), f"round{r}", spec["bytes_per_token"])
                    if i not in refs:  # round 1 is the recompute: its tokens are the reference
                        hit["tokens_equal"] = True
                        refs[i] = hit["out"]
                    engine.settle()
                except Exception as exc:  # noqa: BLE001
                    errors += 1
                    hit = {"error": repr(exc)}
                hit.update(round=r, prompt=i)
                res["requests"].append(hit)
                time.sleep(1.5)  # an enforcement interval between requests
                peak = max(peak, du_bytes(root))
        res["request_errors"] = errors
        res["peak_usage_ratio"] = peak / capacity if capacity else 0.0
    finally:
        stop_evictor(evictor, log, log_path, res)
    reqs = [q for q in res["requests"] if "error" not in q]
    total = sum(n for _ in reqs)
    hit_tokens = sum(min(q.get("loaded_tokens", 0), n) for q in reqs)
    later = [q for q in reqs if q["round"] > 0]
    res["hit_ratio"] = hit_tokens / total if total else 0.0
    res["hit_ratio_after_first"] = (
        sum(min(q.get("loaded_tokens", 0), n) for q in later) / (n * len(later)) if later else 0.0
    )
    res["tokens_equal"] = all(q.get("tokens_equal") for q in reqs)
    res["load_misses"] = sum(sum(q.get("misses", {}).values()) for q in reqs)
    res.update(oracles(k, chunks_per_prompt, rounds, capacity // file_bytes))
    return res


def oracles(prompts: int, chunks: int, rounds: int, capacity: int) -> dict[str, float]:
    """Belady and LRU on the evictor phase's request sequence in the replay's model (block = prompt x chunk),
    at the capacity and under the evictor's default watermarks (over 85% of it, down to 70%).  Blocks are
    numbered so that Belady breaks ties of equal next use tail first: every chunk of a prompt is next used at
    once, and a tie broken head first keeps no usable prefix at all."""
    from kvfs.replay.baselines import simulate_belady, simulate_lru

    seq = [[i * 100_000 + (chunks - c) for c in range(chunks)] for _ in range(rounds) for i in range(prompts)]
    high, low = watermark_blocks(capacity)
    return {
        "belady_hit_ratio": simulate_belady(seq, capacity).hit_ratio,
        "lru_hit_ratio": simulate_lru(seq, capacity).hit_ratio,
        "belady_watermarks_hit_ratio": simulate_belady(seq, high, high - low).hit_ratio,
    }


def _brief(entry: Mapping[str, Any]) -> str:
    if "error" in entry:
        return f"ERROR {entry['error']}"
    parts = []
    for key in ("cold_ttft_s", "first_ttft_s"):
        if key in entry:
            parts.append(f"{key}={entry[key]:.3f}")
    if "hits" in entry:
        by: dict[str, list[float]] = {}
        for h in entry["hits"]:
            by.setdefault(h["variant"], []).append(h["ttft_s"])
        parts += [f"{v}={median(t):.3f}" for v, t in by.items()]
        parts.append("equal" if all(h["tokens_equal"] for h in entry["hits"]) else "TOKENS DIFFER")
    if "stores" in entry:
        parts.append(f"stores={entry['stores']}")
    limit = entry.get("host_limit") or {}
    parts += [f"{k}={limit[k]:.1f}GB/s" for k in ("read", "read_1t", "memcpy", "read_h2d") if k in limit]
    return " ".join(parts)


def _progress(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child_main(
    path: str, phases: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] | None = None
) -> int:
    """An engine process: runs the spec's phase (this module's, or `phases` of the module that started it) and
    writes its result for the parent."""
    with open(path) as f:
        spec = json.load(f)
    phase = spec["phase"]
    from tools.e2e import trace as e2e_trace

    fn = (
        dict(phases)
        if phases is not None
        else {
            "writer": _writer,
            "reader": _reader,
            "cpu": _cpu_tier,
            "evictor": _evictor_phase,
            "trace-ref": e2e_trace.reference_phase,
            "evictor-trace": e2e_trace.evictor_trace_phase,
        }
    )
    fn = fn[phase]
    try:
        result = fn(spec)
    except Exception as exc:  # noqa: BLE001 - the parent reports it and goes on
        import traceback

        result = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
    with open(spec["result_path"], "w") as f:
        json.dump(result, f)
    # Engines leave threads behind; the result is written, so leave at once.
    os._exit(0)


# ---- orchestration (parent) ----


def save_partial(args: argparse.Namespace, results: Mapping[str, Any]) -> None:
    """The results so far to --json (a run cut short still leaves its finished phases)."""
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


SHM = "/dev/shm"


def shm_regions() -> set[str]:
    """vLLM's CPU-tier regions in /dev/shm (`vllm_offload_<engine id>.mmap`, vLLM 0.33)."""
    try:
        return {f for f in os.listdir(SHM) if f.startswith("vllm_offload_")}
    except OSError:
        return set()


@contextlib.contextmanager
def removing_new_regions() -> Iterator[None]:
    """Remove the CPU-tier regions that appear in /dev/shm meanwhile: an engine killed at the end of its phase
    leaves its region behind, and the next engine's would not fit beside it."""
    before = shm_regions()
    try:
        yield
    finally:
        for name in shm_regions() - before:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM, name))


def run_child(
    args: argparse.Namespace, spec: dict[str, Any], work: str, module: str = "tools.e2e"
) -> dict[str, Any]:
    """`spec` in a new engine process (`python -m <module> --child`); its result, or the error it ended with."""
    name = spec.get("name") or f"{spec['phase']}-{spec.get('root_name', 'x')}"
    spec_path = os.path.join(work, f"{name}.json")
    spec["result_path"] = os.path.join(work, f"{name}.result.json")
    spec["out_dir"] = work
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    _progress(f"starting {name}")
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_project_root(), env.get("PYTHONPATH", "")]))
    if spec.get("triton_cache"):  # a fresh host's: every Triton kernel compiles in this engine
        env["TRITON_CACHE_DIR"] = spec["triton_cache"]
    started = time.perf_counter()
    with removing_new_regions():
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--child", spec_path], env=env, start_new_session=True
            )
            rc = proc.wait(timeout=args.child_timeout)
        except subprocess.TimeoutExpired:
            rc = -1
        # vLLM's engine-core process outlives a child that exits at once: end the whole group, so the next
        # engine finds the GPU memory free.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(3)
    elapsed = time.perf_counter() - started
    try:
        with open(spec["result_path"]) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"error": f"child exited {rc} without a result"}
    result["elapsed_s"] = elapsed
    _progress(
        f"{name} done in {elapsed:.0f} s{' (ERROR: ' + result['error'] + ')' if 'error' in result else ''}"
    )
    return result


def run_trace(args: argparse.Namespace, base: Mapping[str, Any], work: str) -> dict[str, Any]:
    """The trace phase: a plain engine's recompute of the checked requests, then the run under the evictor."""
    workload, requests = args.evictor_trace
    trace = {
        **base, "workload": workload, "requests": requests, "trace_seed": args.trace_seed,
        "check_every": args.check_every, "fraction": args.evictor_fraction, "policy": args.evictor_policy,
    }  # fmt: skip
    ref = run_child(args, {**trace, "phase": "trace-ref", "connector": "none", "root_name": "ref"}, work)
    root = os.path.join(args.shm_dir, "evictor-trace")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    spec = {**trace, "phase": "evictor-trace", "connector": "kvfs", "root": root, "root_name": "trace"}
    spec["refs"] = ref.get("refs", {})
    result = run_child(args, spec, work)
    if "error" in ref:
        result["reference_error"] = ref["error"]
    shutil.rmtree(root, ignore_errors=True)
    return result


def engine_base(args: argparse.Namespace, work: str) -> dict[str, Any]:
    """What every engine phase's spec holds: the model's shape written as `<work>/model/config.json` (dummy
    weights) and the prompts (`args.model`, `args.prompt_sizes`, `args.reps`, `args.gpu_memory_utilization`)."""
    model = MODELS[args.model]
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(model, f)
    return {
        "model_dir": model_dir,
        "max_model_len": model["max_position_embeddings"],
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "vocab": model["vocab_size"],
        "bytes_per_token": kv_bytes_per_token(model),
        "sizes": args.prompt_sizes,
        "seeds": list(range(1, len(args.prompt_sizes) + 1)),
        "reps": args.reps,
    }


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    work = tempfile.mkdtemp(prefix="kvfs-e2e-")
    from connector.config import DEFAULT_IDLE_WAIT_S
    from kvfs.units import parse_duration

    idle = args.settings.get("kvfs_idle_wait", DEFAULT_IDLE_WAIT_S)
    base = engine_base(args, work)
    bpt = base["bytes_per_token"]
    base |= {
        "settings": args.settings,
        "tp": args.tensor_parallel_size,
        "idle_wait_s": parse_duration(idle) if isinstance(idle, str) else float(idle),
        "host_limit": not args.no_host_limit,
    }
    results: dict[str, Any] = {
        "command": "python -m tools.e2e " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "kv_bytes_per_token": bpt,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "roots": {},
    }
    dirs = {"shm": args.shm_dir, "disk": args.disk_dir}
    refs: list[list[int] | None] = [None] * len(args.prompt_sizes)
    for root_name in args.roots:
        root = dirs[root_name]
        phases: dict[str, Any] = {}
        results["roots"][root_name] = phases
        fresh = []
        for run in range(args.fresh_engines):
            # The last run's files stay for the reader; each run starts from an emptied root.
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            spec = {**base, "phase": "writer", "connector": "kvfs", "root": root, "root_name": root_name}
            if args.fresh_engines > 1:
                spec["triton_cache"] = tempfile.mkdtemp(prefix=f"triton-{run}-", dir=work)
                spec["name"] = f"writer-{root_name}-{run}"
                if run:  # later runs: drops and one hit each
                    spec.update(reps=1, host_limit=False)
            fresh.append(run_child(args, spec, work))
            if args.fresh_engines > 1:
                phases["fresh"] = fresh
            save_partial(args, results)
        phases["writer"] = fresh[0]
        for i, p in enumerate(phases["writer"].get("prompts", [])):
            if "ref_tokens" in p and refs[i] is None:
                refs[i] = p["ref_tokens"]
        if not args.no_reader:
            spec = {**base, "phase": "reader", "connector": "kvfs", "root": root, "root_name": root_name}
            spec["refs"] = refs
            spec["warmup"] = args.reader_warmup
            if args.cold_reader:
                spec["cold"] = True
                spec["prompt_files"] = {
                    str(p["tokens"]): p.get("files", []) for p in fresh[-1].get("prompts", [])
                }
            phases["reader"] = run_child(args, spec, work)
            save_partial(args, results)
        phases["rank_files"] = rank_files(root)
        shutil.rmtree(root, ignore_errors=True)
    if not args.no_cpu_tier:
        need = sum(args.prompt_sizes) * bpt
        spec = {**base, "phase": "cpu", "connector": "cpu", "root_name": "cpu", "refs": refs}
        spec["cpu_bytes"] = int(need * 1.25) + (4 << 30)
        results["cpu"] = run_child(args, spec, work)
        save_partial(args, results)
    if args.evictor:
        root = os.path.join(args.shm_dir, "evictor")
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        spec = {
            **base, "phase": "evictor", "connector": "kvfs", "root": root, "root_name": "evictor",
            "tokens": args.evictor_tokens, "prompts": args.evictor_prompts, "rounds": args.evictor_rounds,
            "fraction": args.evictor_fraction, "policy": args.evictor_policy,
        }  # fmt: skip
        results["evictor"] = run_child(args, spec, work)
        shutil.rmtree(root, ignore_errors=True)
    if args.evictor_trace:
        results["evictor_trace"] = run_trace(args, base, work)
    report = format_table(rows_of(results))
    for notes in (format_cold(results), format_reader_warmup(results)):
        report = f"{report}\n\n{notes}" if notes else report
    ev = format_evictor(results.get("evictor", {}))
    from tools.e2e.trace import format_trace

    trace = format_trace(results.get("evictor_trace", {}))
    ranks = "".join(
        f"files per rank under {name}: {phases.get('rank_files', {})}\n"
        for name, phases in results["roots"].items()
    )
    text = (
        f"{results['command']}\nmodel {args.model}, {bpt} KV bytes/token, tensor parallel "
        f"{args.tensor_parallel_size}\n\n{report}\n{ranks}\n{ev}\n{trace}\n"
    )
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
