"""Connector data-path benchmark: store/load GB/s beside limits measured in the same run.

For each target directory (/dev/shm and a local-disk directory) and thread count (1/8/16/32):
  * kvfs store (GPU gather + D2H + block file publish) and load (file read + H2D + scatter) through the IoPool,
  * raw file write/read of the same file sizes with the same threads (no GPU work, no checksum),
  * pinned device-to-host / host-to-device bandwidth (1 GiB),
  * a naive baseline: per-layer `.cpu()` then write, per file,
and the scheduler-thread time per step of a 100-chunk prompt (existence-cache lookups + journal access records,
what KvfsManager does per step) on a tree of --tree-files block files.  Llama-3.1-8B-like KV: 32 layers, 8 KV
heads, head dim 128, bf16, 16-token blocks, 256-token (32 MiB) files.  Imports no vLLM.

    python -m tools.datapath.bench [--targets shm,disk] [--threads 1,8,16,32] [--files 48] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import torch

from connector.access import AccessRecorder
from connector.copier import GroupCopier
from connector.iopool import FileOp, IoPool
from connector.lookup import ExistenceCache, Presence
from connector.naming import NamespaceDir, file_identity_key
from kvfs import blockfile
from kvfs.blockfile import HEADER_SIZE, BlockIdentity, probe_o_direct
from kvfs.checksum import checksum64
from kvfs.journal import JournalWriter

LAYERS, HEADS, HEAD_DIM, BLOCK_TOKENS, BPC = 32, 8, 128, 16, 16
GB = 1e9


def median_of(reps: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(reps))


def pinned_bandwidth(device: torch.device, reps: int) -> tuple[float, float]:
    n = 1 << 30
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)

    def once(dst: torch.Tensor, src: torch.Tensor) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t) / GB

    d2h = median_of(reps, lambda: once(host, dev))
    h2d = median_of(reps, lambda: once(dev, host))
    return d2h, h2d


def parallel(threads: int, items: list, fn: Callable) -> float:  # type: ignore[type-arg]
    """Run fn(item, thread_index) over items on `threads` threads; return wall seconds."""
    lock = threading.Lock()
    queue = list(items)
    errors: list[BaseException] = []

    def worker(idx: int) -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                item = queue.pop()
            try:
                fn(item, idx)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                return

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu" if args.cpu else "cuda")
        self.files = args.files
        nblocks = self.files * BPC * 2
        g = torch.Generator(device=self.device).manual_seed(0)
        self.kv = [
            torch.randn(nblocks, BLOCK_TOKENS, 2, HEADS, HEAD_DIM, generator=g, device=self.device).to(
                torch.bfloat16
            )
            for _ in range(LAYERS)
        ]
        views = [t.view(nblocks, -1).view(torch.int8) for t in self.kv]
        self.copier = GroupCopier(views, [v.shape[1] for v in views], use_triton=not args.no_triton)
        self.file_bytes = self.copier.payload_bytes(BPC)
        perm = torch.randperm(nblocks, generator=torch.Generator().manual_seed(1)).tolist()
        self.store_ids = [perm[i * BPC : (i + 1) * BPC] for i in range(self.files)]
        self.load_ids = [perm[(self.files + i) * BPC : (self.files + i + 1) * BPC] for i in range(self.files)]
        self.keys = [secrets.token_bytes(32) + b"\0\0\0\0" for _ in range(self.files)]
        self.fp = b"\x01" * 32

    def path(self, root: str, i: int) -> str:
        h = self.keys[i][:32].hex()
        return os.path.join(root, "bench_0123456789ab", h[:3], h[3:5] + "_g0", h + ".kvfs")

    def ops(self, root: str, load: bool, job_id: int) -> list[FileOp]:
        ids = self.load_ids if load else self.store_ids
        return [
            FileOp(
                job_id=job_id,
                is_load=load,
                path=self.path(root, i),
                ident=BlockIdentity(self.fp, file_identity_key(self.keys[i], 0, BPC)),
                copier=self.copier,
                block_ids=ids[i],
                first=0,
                file_blocks=BPC,
            )
            for i in range(self.files)
        ]

    def clear(self, root: str) -> None:
        shutil.rmtree(os.path.join(root, "bench_0123456789ab"), ignore_errors=True)

    def pool(self, threads: int, direct: bool = False, durability: str = "none") -> IoPool:
        """An IoPool for these files: staging uncapped, no store budget (a benchmark drops nothing)."""
        from kvfs.blockfile import Durability

        return IoPool(
            threads=threads,
            max_file_bytes=self.file_bytes,
            device=self.device,
            max_staging_bytes=64 << 30,
            store_budget_s=1e9,
            direct=direct,
            durability=Durability(durability),
            device_checksums=not self.args.cpu_checksums,
            cuda_graphs=not self.args.no_graphs,
        )

    def kvfs(self, root: str, pool: IoPool) -> dict[str, float]:
        """One repetition: store then load every file through `pool` (kept warm by the caller, as an engine keeps
        its own)."""
        total = self.files * self.file_bytes
        self.clear(root)
        torch.cuda.synchronize() if self.device.type == "cuda" else None
        t = time.perf_counter()
        pool.submit(1, self.ops(root, False, 1), is_load=False)
        pool.wait([1])
        store = total / (time.perf_counter() - t) / GB
        assert all(d.success for d in pool.take_finished()), "store failed"
        drop_caches(direct=pool.direct)
        t = time.perf_counter()
        pool.submit(2, self.ops(root, True, 2), is_load=True)
        pool.wait([2])
        load = total / (time.perf_counter() - t) / GB
        assert all(d.success for d in pool.take_finished()), "load failed"
        return {"store": store, "load": load, "staging_mib": pool.staging_bytes / 2**20}

    def raw(
        self,
        root: str,
        threads: int,
        direct: bool,
        durability: str,
        checksum: bool = False,
        reps: int | None = None,
    ) -> dict[str, float]:
        """Plain file write/read of the same sizes with the same threads, from/to per-thread buffers; with
        `checksum`, plus one xxh3 pass over the payload (the extra memory pass a self-validating file costs)."""
        import mmap

        size = HEADER_SIZE + self.file_bytes
        bufs = [mmap.mmap(-1, size) for _ in range(threads)]
        for b in bufs:
            b.write(os.urandom(4096) * (size // 4096))
        flags = os.O_DIRECT if direct else 0
        paths = [self.path(root, i) + ".raw" for i in range(self.files)]
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)

        def write(p: str, idx: int) -> None:
            if checksum:
                checksum64(memoryview(bufs[idx])[HEADER_SIZE:])
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
            try:
                os.pwritev(fd, [bufs[idx]], 0)
                if durability != "none":
                    os.fdatasync(fd)
            finally:
                os.close(fd)

        def read(p: str, idx: int) -> None:
            fd = os.open(p, os.O_RDONLY | flags)
            try:
                os.preadv(fd, [bufs[idx]], 0)
            finally:
                os.close(fd)
            if checksum:
                checksum64(memoryview(bufs[idx])[HEADER_SIZE:])

        total = self.files * self.file_bytes
        writes, reads = [], []
        for _ in range(reps or self.args.reps):
            for p in paths:
                if os.path.exists(p):
                    os.unlink(p)
            writes.append(total / parallel(threads, paths, write) / GB)
            drop_caches(direct)
            reads.append(total / parallel(threads, paths, read) / GB)
        for p in paths:
            os.unlink(p)
        suffix = "_ck" if checksum else ""
        return {
            f"raw_write{suffix}": statistics.median(writes),
            f"raw_read{suffix}": statistics.median(reads),
        }

    def memcpy(self, threads: int) -> float:
        """Host memory: GB/s of payload copied buffer-to-buffer by `threads` threads (numpy releases the GIL).
        A copy reads and writes each byte once, as a page-cache read() or write() does; a staged kvfs file adds
        the DMA's pass over the staging buffer on top of its read() or write()."""
        import numpy as np

        src = [
            np.frombuffer(os.urandom(1 << 20) * (self.file_bytes >> 20), dtype=np.uint8)
            for _ in range(threads)
        ]
        dst = [np.empty_like(x) for x in src]

        def copy(_i: int, idx: int) -> None:
            np.copyto(dst[idx], src[idx])

        total = self.files * self.file_bytes
        return median_of(
            self.args.reps, lambda: total / parallel(threads, list(range(self.files)), copy) / GB
        )

    def naive(self, root: str, threads: int, durability: str) -> float:
        """Per file: each layer's pages `.cpu()` (pageable), written one after another."""
        ids = [torch.tensor(i, device=self.device) for i in self.store_ids]
        paths = [self.path(root, i) + ".naive" for i in range(self.files)]
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)

        def store(i: int, _idx: int) -> None:
            with open(paths[i], "wb") as fh:
                for t in self.kv:
                    fh.write(t.index_select(0, ids[i]).view(torch.int16).cpu().numpy().tobytes())
                if durability != "none":
                    fh.flush()
                    os.fdatasync(fh.fileno())

        total = self.files * self.file_bytes
        result = median_of(
            self.args.reps, lambda: total / parallel(threads, list(range(self.files)), store) / GB
        )
        for p in paths:
            os.unlink(p)
        return result


def drop_caches(direct: bool) -> None:
    """Reads after writes come from the page cache unless O_DIRECT is used or the cache is dropped (root)."""
    if direct:
        return
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
    except OSError:
        pass


def scheduler_step_bench(root: str, tree_files: int, chunks: int = 100, steps: int = 50) -> dict[str, float]:
    """Scheduler-thread time per step for a `chunks`-chunk prompt with `tree_files` block files on the mount."""
    ns = NamespaceDir(root=root, fields={"model_name": "bench", "kvfs_format": 1})
    keys = [secrets.token_bytes(32) + b"\0\0\0\0" for _ in range(tree_files)]
    t0 = time.perf_counter()
    made_dirs: set[str] = set()
    for k in keys:
        p = ns.path(k)
        d = os.path.dirname(p)
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            made_dirs.add(d)
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    build_s = time.perf_counter() - t0
    cache = ExistenceCache(ns.paths_all_ranks, ttl_s=2.0)
    journal = JournalWriter(root, writer_id="bench-sched")
    recorder = AccessRecorder(journal, ns)
    prompt = keys[:chunks]
    try:
        # Cold: every chunk unknown -> RETRY, queued for the background checker.
        t = time.perf_counter()
        answers = [cache.query(k) for k in prompt]
        cold_us = (time.perf_counter() - t) * 1e6
        assert all(a is Presence.RETRY for a in answers)
        t = time.perf_counter()
        cache.wait_idle(30)
        resolve_ms = (time.perf_counter() - t) * 1e3
        warm = []
        for _ in range(steps):
            t = time.perf_counter()
            hits = [cache.query(k) for k in prompt]
            recorder.record(prompt)  # prepare_load: access records, journaled off-thread
            warm.append((time.perf_counter() - t) * 1e6)
            assert all(h is Presence.HIT for h in hits)
    finally:
        cache.shutdown()
        recorder.close()
    return {
        "tree_files": tree_files,
        "tree_build_s": build_s,
        "cold_step_us": cold_us,
        "background_resolve_ms": resolve_ms,
        "warm_step_us_median": statistics.median(warm),
        "warm_step_us_max": max(warm),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="shm,disk")
    parser.add_argument("--threads", default="1,8,16,32")
    parser.add_argument(
        "--files", type=int, default=96, help="32 MiB files per measurement (several per thread: throughput)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--disk-dir", default=os.path.join(os.getcwd(), "bench-data"))
    parser.add_argument(
        "--tree-files",
        type=int,
        default=1_000_000,
        help="files in the scheduler-step tree (0: skip that part)",
    )
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU tensors (no pinned-copy limit)")
    parser.add_argument(
        "--cpu-checksums",
        action="store_true",
        help="hash payloads on the CPU as they are read/written instead of on the GPU (the comparison)",
    )
    parser.add_argument(
        "--no-graphs",
        action="store_true",
        help="issue each file's copies and kernels eagerly (no CUDA graphs)",
    )
    parser.add_argument(
        "--piece-kib", type=int, default=None, help="kvfs.blockfile checksum/I/O piece size (KiB)"
    )
    args = parser.parse_args(argv)
    if args.piece_kib:
        blockfile.PIECE_BYTES = args.piece_kib << 10
    results: dict[str, object] = {"torch": torch.__version__, "threads": args.threads, "files": args.files}
    if torch.cuda.is_available() or args.cpu:
        bench = Bench(args)
        results["device"] = "cpu" if args.cpu else torch.cuda.get_device_name()
        results["file_mib"] = bench.file_bytes / 2**20
        results["triton_copy"] = bench.copier.triton
        results["device_checksums"] = bench.device.type == "cuda" and not args.cpu_checksums
        results["cuda_graphs"] = bench.device.type == "cuda" and not args.no_graphs
        # On CPU (a dry run of this script) there is no copy engine: its limit is taken as unbounded.
        d2h, h2d = (float("inf"), float("inf")) if args.cpu else pinned_bandwidth(bench.device, args.reps)
        results["pinned_d2h"], results["pinned_h2d"] = d2h, h2d
        print(
            f"device {results['device']}, torch {torch.__version__}, triton copy {bench.copier.triton}, "
            f"{bench.file_bytes >> 20} MiB files x {args.files}"
        )
        print(f"pinned D2H {d2h:.1f} GB/s, H2D {h2d:.1f} GB/s")
        print(
            f"payload checksums on the {'GPU' if results['device_checksums'] else 'CPU'}, "
            f"CUDA graphs {'on' if results['cuda_graphs'] else 'off'}"
        )
        rows = []
        for target in args.targets.split(","):
            root = "/dev/shm/kvfs-bench" if target == "shm" else args.disk_dir
            os.makedirs(root, exist_ok=True)
            direct = target == "disk" and probe_o_direct(root)
            durability = "none"
            print(f"\n[{target}] {root} (O_DIRECT {'on' if direct else 'off'})")
            print(
                "threads | store | raw write | store/min(pinned,raw) | load | raw read | load/min(pinned,raw) | "
                "naive store | store/naive | staging MiB | raw write+xxh3 | raw read+xxh3 | "
                "store/min(pinned,raw+xxh3) | load/min(pinned,raw+xxh3) | host memcpy"
            )
            for threads in [int(x) for x in args.threads.split(",")]:
                # kvfs and raw alternate repetition by repetition, and each ratio is the median of the
                # per-repetition ratios: the machine's load drifts over a run, and should hit both sides alike.
                # One pool per thread count, warmed by a first round (thread start-up, Triton compilation,
                # CUDA graph capture), as an engine's pool is warm after its first requests.
                pool = bench.pool(threads, direct, durability)
                try:
                    bench.kvfs(root, pool)
                    pairs = [
                        (
                            bench.kvfs(root, pool),
                            bench.raw(root, threads, direct, durability, reps=1),
                        )
                        for _ in range(args.reps)
                    ]
                finally:
                    pool.shutdown()
                ours = {k: statistics.median(o[k] for o, _ in pairs) for k in pairs[0][0]}
                raw = {k: statistics.median(r[k] for _, r in pairs) for k in pairs[0][1]}
                raw.update(bench.raw(root, threads, direct, durability, checksum=True))
                naive = bench.naive(root, threads, durability)
                memcpy = bench.memcpy(threads)
                row = {
                    "target": target,
                    "threads": threads,
                    **ours,
                    **raw,
                    "naive_store": naive,
                    "host_memcpy": memcpy,
                    "store_ratio": statistics.median(o["store"] / min(d2h, r["raw_write"]) for o, r in pairs),
                    "load_ratio": statistics.median(o["load"] / min(h2d, r["raw_read"]) for o, r in pairs),
                    "naive_ratio": ours["store"] / naive,
                    "store_vs_raw_ck": ours["store"] / min(d2h, raw["raw_write_ck"]),
                    "load_vs_raw_ck": ours["load"] / min(h2d, raw["raw_read_ck"]),
                }
                rows.append(row)
                print(
                    f"{threads:7d} | {ours['store']:5.1f} | {raw['raw_write']:9.1f} | {row['store_ratio']:21.2f} | "
                    f"{ours['load']:4.1f} | {raw['raw_read']:8.1f} | {row['load_ratio']:20.2f} | {naive:11.2f} | "
                    f"{row['naive_ratio']:11.1f} | {ours['staging_mib']:11.0f} | {raw['raw_write_ck']:14.1f} | "
                    f"{raw['raw_read_ck']:13.1f} | {row['store_vs_raw_ck']:26.2f} | {row['load_vs_raw_ck']:25.2f} | "
                    f"{memcpy:11.1f}",
                    flush=True,
                )
            bench.clear(root)
            if target == "shm":
                shutil.rmtree(root, ignore_errors=True)
        results["rows"] = rows
    else:
        print("no CUDA device: only the scheduler-step measurement runs")
    if args.tree_files > 0:
        tree_root = tempfile.mkdtemp(
            prefix="kvfs-tree-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        try:
            sched = scheduler_step_bench(tree_root, args.tree_files)
        finally:
            shutil.rmtree(tree_root, ignore_errors=True)
        results["scheduler"] = sched
        print(
            f"\nscheduler thread, 100-chunk prompt on {sched['tree_files']} files: cold step "
            f"{sched['cold_step_us']:.0f} us (all RETRY, resolved off-thread in "
            f"{sched['background_resolve_ms']:.0f} ms), warm step median {sched['warm_step_us_median']:.0f} us, "
            f"max {sched['warm_step_us_max']:.0f} us (limit 1000 us)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
