"""`KvfsTier` against vLLM's own `fs` secondary tier: store and load GB/s, side by side in one run.

Every tier is built by vLLM's `SecondaryTierFactory` behind a real `TieringOffloadingSpec`, over the same
page-aligned CPU-tier buffer (an anonymous mmap, as vLLM's `/dev/shm` region is page-aligned), and moves the same
chunks with the same number of threads: `KvfsTier` with `io_threads = T` and its defaults (payload checksums,
journal, O_DIRECT where the root takes it), the stock tier with T threads split between its read- and
write-priority groups (both drain either queue; O_DIRECT where its own probe passes).  A third contender,
"bound", is the stock tier with an algorithm-2 hash (kvfs.checksum) of every block on its I/O thread: what
checksums cost a tier that moves the bytes exactly as the stock one does.

Per cell the tiers are built once (an engine keeps its tier) and warmed by one unrecorded repetition; each
repetition stores every chunk to fresh keys (one job per chunk: the stock tier runs a job on one thread, so this
is its best case), then loads them all into other rows and checks the bytes.  The contenders rotate repetition
by repetition; a cell reports median GB/s, the median of the per-repetition ratios to stock and each tier's median
CPU time per file stored and loaded (the whole process, every thread).  On the disk root the files are written back and dropped from the page cache (fsync + POSIX_FADV_DONTNEED, per file: nothing
global) before the loads, so every tier reads from the device.

    python -m tools.datapath.tier_bench [--roots shm,disk] [--mib 2,32] [--threads 1,2,4,8] [--gib 1] [--reps 5]
    python -m tools.datapath.tier_bench --dry-run      # tiny and fast, any vLLM: what CI runs so the script cannot rot
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from connector.compat import (
    VLLM_VERSION,
    ReqContext,
    SecondaryTierFactory,
    SecondaryTierManager,
    TieringOffloadingSpec,
    TransferJob,
    fs_tier_checksummed,
    offloading_config,
)
from kvfs.checksum import piece_digests

GB = 1e9
KV_BYTES_PER_BLOCK = 2 << 20  # Llama-3.1-8B, bf16, 16-token blocks: 32 layers x 2 x 8 heads x 128 x 2 B x 16
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Cell:
    root: str  # "shm" or "disk"
    mib: float
    threads: int


class Primary:
    """The CPU tier's memory as a secondary tier sees it: page-aligned rows of one chunk each."""

    def __init__(self, rows: int, row_bytes: int) -> None:
        self.map = mmap.mmap(-1, rows * row_bytes)
        # numpy, not torch: torch's CPU ops start OpenMP threads that keep spinning after each op.
        self.rows = np.frombuffer(self.map, dtype=np.int8).reshape(rows, row_bytes)
        self.rows[:] = np.random.default_rng(0).integers(-128, 128, self.rows.shape, dtype=np.int8)
        self.view = memoryview(self.rows)


def make_spec(row_bytes: int) -> TieringOffloadingSpec:
    if row_bytes % KV_BYTES_PER_BLOCK == 0:
        per_block, blocks = KV_BYTES_PER_BLOCK, row_bytes // KV_BYTES_PER_BLOCK
    else:  # small rows (dry run): one block a chunk
        per_block, blocks = row_bytes, 1
    config = offloading_config(
        {"cpu_bytes_to_use": row_bytes, "secondary_tiers": []},
        blocks_per_chunk=blocks,
        kv_bytes_per_block=per_block,
        layers=32,
        model="kvfs-bench/tier",
    )
    return TieringOffloadingSpec(config)


def make_tier(
    kind: str, root: str, threads: int, primary: Primary, spec: Any, kvfs_settings: dict[str, str]
) -> Any:
    os.makedirs(root, exist_ok=True)
    if kind in ("stock", "bound"):
        cfg: dict[str, Any] = {
            "type": "fs",
            "root_dir": root,
            "n_read_threads": threads - threads // 2,
            "n_write_threads": threads // 2,
        }
    else:
        cfg = {
            "type": "KvfsTier",
            "module_path": "connector.tier",
            "root": root,
            "io_threads": threads,
            "store_budget": "1h",  # a benchmark drops nothing
            **kvfs_settings,
        }
    return SecondaryTierFactory.create_secondary_tier(cfg, primary.view, spec)


def run_jobs(tier: SecondaryTierManager, jobs: list[TransferJob], load: bool) -> tuple[float, float]:
    """Submit every job, poll until all finished (as the scheduler does each step); wall seconds in all, and of
    them the submitting (the scheduler thread's own Python and its waits for the GIL while I/O threads run)."""
    pending = {j.job_id for j in jobs}
    failed: list[int] = []
    t0 = time.perf_counter()
    for j in jobs:
        (tier.submit_load if load else tier.submit_store)(j)
    submit_s = time.perf_counter() - t0
    deadline = time.monotonic() + TIMEOUT_S
    while pending:
        for r in tier.get_finished_jobs():
            pending.discard(r.job_id)
            if not r.success:
                failed.append(r.job_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs unfinished after {TIMEOUT_S} s")
        time.sleep(0.0002)
    seconds = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"{len(failed)} {'load' if load else 'store'} jobs failed")
    return seconds, submit_s


def evict(root: str) -> None:
    """Write back and drop this tier's files from the page cache (only ours; the cache of other work stays)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def clear(root: str) -> None:
    """Remove the block files of a repetition (directories, configs and journals stay, as on a live mount)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith((".kvfs", ".bin")):
                os.unlink(os.path.join(dirpath, name))


def one_rep(kind: str, tier: Any, cell: Cell, root: str, primary: Primary, chunks: int) -> dict[str, float]:
    """Store `chunks` rows to fresh keys, load them into the other half of the rows, check the bytes."""
    row = primary.rows.shape[1]
    keys = [secrets.token_bytes(32) + (0).to_bytes(4, "big") for _ in range(chunks)]

    def jobs(first_id: int, dst: int, promotion: bool) -> list[TransferJob]:
        return [
            TransferJob(
                job_id=first_id + i,
                keys=[k],
                chunk_ids=np.array([dst + i], dtype=np.int64),
                is_promotion=promotion,
                req_context=ReqContext(f"r{i}"),
            )
            for i, k in enumerate(keys)
        ]

    primary.rows[chunks:] = 0
    store_jobs, load_jobs = jobs(0, 0, False), jobs(chunks, chunks, True)
    cpu0 = process_cpu_s()
    store_s, store_submit_s = run_jobs(tier, store_jobs, load=False)
    cpu1 = process_cpu_s()
    if cell.root == "disk":
        evict(root)
    cpu2 = process_cpu_s()
    load_s, load_submit_s = run_jobs(tier, load_jobs, load=True)
    cpu3 = process_cpu_s()
    clear(root)
    if not np.array_equal(primary.rows[:chunks], primary.rows[chunks:]):
        raise RuntimeError(f"{kind}: loaded bytes differ from the stored ones")
    return {
        "store": chunks * row / store_s / GB,
        "load": chunks * row / load_s / GB,
        # Every thread of the process (the polling loop included, as in a scheduler), per file.
        "store_cpu_us": (cpu1 - cpu0) / chunks * 1e6,
        "load_cpu_us": (cpu3 - cpu2) / chunks * 1e6,
        "store_submit_us": store_submit_s / chunks * 1e6,
        "load_submit_us": load_submit_s / chunks * 1e6,
    }


def process_cpu_s() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


KINDS = ("kvfs", "stock", "bound")


def measure(cell: Cell, base: str, gib: float, reps: int, kvfs_settings: dict[str, str]) -> dict[str, Any]:
    """One cell: the tiers built once (an engine keeps its tier), one unrecorded warm-up repetition each, then
    `reps` repetitions in rotating order.  "bound" is the stock tier with an algorithm-2 hash of every block on its
    I/O thread: what checksums cost a tier that moves the bytes exactly as the stock one does."""
    row = int(cell.mib * 2**20)
    chunks = max(2 * cell.threads, int(gib * 2**30) // row)
    primary = Primary(2 * chunks, row)
    spec = make_spec(row)
    roots = {kind: os.path.join(base, kind) for kind in KINDS}
    tiers = {kind: make_tier(kind, roots[kind], cell.threads, primary, spec, kvfs_settings) for kind in KINDS}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    o_direct = {"kvfs": tiers["kvfs"].pool.direct, "stock": getattr(tiers["stock"], "_use_o_direct", None)}
    # As in vLLM's engine core, which freezes its start-up heap (vllm.utils.gc_utils.freeze_gc_heap): unfrozen,
    # every full collection walks vLLM's and torch's ~600,000 start-up objects, about a third of a 64 KiB cell's
    # time, charged to whichever tier allocates more per file: a cost the engine does not have.
    gc.collect()
    gc.freeze()
    try:
        for rep in range(reps + 1):
            for kind in KINDS[rep % 3 :] + KINDS[: rep % 3]:
                if kind == "bound":
                    with fs_tier_checksummed(piece_digests):
                        r = one_rep(kind, tiers[kind], cell, roots[kind], primary, chunks)
                else:
                    r = one_rep(kind, tiers[kind], cell, roots[kind], primary, chunks)
                if rep:
                    runs[kind].append(r)
    finally:
        gc.unfreeze()
        for tier in tiers.values():
            tier.shutdown()
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {
        "root": cell.root,
        "mib": cell.mib,
        "threads": cell.threads,
        "chunks": chunks,
        "o_direct": o_direct,
    }
    for d in ("store", "load"):
        for kind in KINDS:
            out[f"{kind}_{d}"] = statistics.median(r[d] for r in runs[kind])
            out[f"{kind}_{d}_cpu_us"] = statistics.median(r[f"{d}_cpu_us"] for r in runs[kind])
            out[f"{kind}_{d}_submit_us"] = statistics.median(r[f"{d}_submit_us"] for r in runs[kind])
        for name, kind in (("ratio", "kvfs"), ("bound", "bound")):
            ratios = [k[d] / s[d] for k, s in zip(runs[kind], runs["stock"], strict=True)]
            out[f"{d}_{name}"] = statistics.median(ratios)
            out[f"{d}_{name}s"] = ratios
    return out


@contextmanager
def bench_dir(parent: str) -> Iterator[str]:
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix="kvfs-tier-bench-", dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| root | chunk MiB | threads | store kvfs / stock GB/s | **store ratio** | store bound | load kvfs / stock GB/s "
        "| **load ratio** | load bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['root']} | {r['mib']:g} | {r['threads']} | {r['kvfs_store']:.2f} / {r['stock_store']:.2f} "
            f"| **{r['store_ratio']:.2f}** | {r['store_bound']:.2f} | {r['kvfs_load']:.2f} / {r['stock_load']:.2f} "
            f"| **{r['load_ratio']:.2f}** | {r['load_bound']:.2f} |"
        )
    return "\n".join(lines)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs as KvfsTier settings (the tier accepts names with or without the `kvfs_` prefix)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kvfs-setting {pair!r}: expected KEY=VALUE")
        settings[key.removeprefix("kvfs_")] = value
    return settings


def parse_list(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(x) for x in text.split(",") if x]


def run_root(
    root_name: str, parent: str, args: argparse.Namespace, kvfs_settings: dict[str, str]
) -> list[Any]:
    """Every cell of one root, printed as it completes."""
    results = []
    with bench_dir(parent) as base:
        for mib in parse_list(args.mib, float):
            for threads in parse_list(args.threads, int):
                r = measure(Cell(root_name, mib, threads), base, args.gib, args.reps, kvfs_settings)
                print(
                    f"{root_name} {mib:g} MiB x{r['chunks']} {threads} threads "
                    f"(O_DIRECT kvfs {r['o_direct']['kvfs']}, stock {r['o_direct']['stock']}): "
                    f"store {r['kvfs_store']:.2f} vs {r['stock_store']:.2f} GB/s ({r['store_ratio']:.2f}x, "
                    f"bound {r['store_bound']:.2f}x), load {r['kvfs_load']:.2f} vs {r['stock_load']:.2f} GB/s "
                    f"({r['load_ratio']:.2f}x, bound {r['load_bound']:.2f}x); CPU us a file store/load: kvfs "
                    f"{r['kvfs_store_cpu_us']:.0f}/{r['kvfs_load_cpu_us']:.0f}, stock {r['stock_store_cpu_us']:.0f}/"
                    f"{r['stock_load_cpu_us']:.0f}; submitting, us a file store/load: kvfs "
                    f"{r['kvfs_store_submit_us']:.1f}/{r['kvfs_load_submit_us']:.1f}, stock "
                    f"{r['stock_store_submit_us']:.1f}/{r['stock_load_submit_us']:.1f}",
                    flush=True,
                )
                results.append(r)
    return results


@contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """The interpreter's GIL switch interval for the run (unchanged with None), restored after."""
    previous = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--roots", default="shm,disk", help="shm (/dev/shm) and/or disk (--disk-dir)")
    parser.add_argument("--disk-dir", default=os.path.join(os.getcwd(), "bench-data"))
    parser.add_argument("--mib", default="2,32", help="chunk (file) sizes in MiB")
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument(
        "--gib", type=float, default=1.0, help="data moved per direction, repetition and tier"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--kvfs-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a KvfsTier setting (repeatable), e.g. direct_io=false, journal=false: to attribute a gap to a part",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (seconds; Python's default 0.005): how much GIL hand-offs cost",
    )
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes in temporary directories, one repetition (CI)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.mib, args.threads, args.gib, args.reps = "0.25", "1,2", 4 / 1024, 1
    if not args.dry_run and not VLLM_VERSION.startswith("0.33."):
        print(
            f"tier_bench compares against vLLM 0.33's fs tier; this is vLLM {VLLM_VERSION} (make test-vllm033 "
            "builds .venv-vllm033). --dry-run runs on any supported vLLM.",
            file=sys.stderr,
        )
        return 2
    roots = {"shm": "/dev/shm", "disk": args.disk_dir}
    kvfs_settings = parse_settings(args.kvfs_setting)
    print(
        f"vLLM {VLLM_VERSION} (stock fs tier) vs KvfsTier, torch {torch.__version__}, {os.cpu_count()} CPUs; "
        f"{args.gib:g} GiB per direction, {args.reps} alternating repetitions"
        + "".join(f", kvfs {kv}" for kv in args.kvfs_setting)
        + (f", switch interval {args.switch_interval:g} s" if args.switch_interval is not None else ""),
        flush=True,
    )
    results = []
    with switch_interval(args.switch_interval):
        for root_name in parse_list(args.roots, str):
            parent = tempfile.gettempdir() if args.dry_run else roots[root_name]
            results.extend(run_root(root_name, parent, args, kvfs_settings))
    print(table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"vllm": VLLM_VERSION, "args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
