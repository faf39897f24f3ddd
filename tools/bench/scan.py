"""Scan rate next to GNU find on the same tree, in the same run.

    python -m tools.bench.scan [--files 1000000] [--runs 3] [--threads N] [--dir bench-data/scan-1000000]

The tree (zero-byte files in the real layout: kvfs namespaces without rank, a stock `.bin` namespace with four
ranks) is created once under bench-data/ and reused.  Each run times, on the warm tree:
  * baseline: `find <root> -type f -printf '%s %A@\\n' > /dev/null` (readdir + lstat of every file);
  * walk: `kvfs.scan.walk_tree` — readdir + lstat + parse of every entry into BlockRows, no database;
  * scan: `kvfs.scan.scan_tree` into a fresh SQLite catalog (walk + bulk upsert + prune);
  * rescan: `scan_tree` again into that catalog (steady-state reconciliation: every row a conflict).
Goal: walk >= 0.8x find.  Medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvfs.catalog import Catalog
from kvfs.layout import BlockKey, kvfs_fields, namespace_name, write_namespace_config
from kvfs.scan import default_threads, scan_tree, walk_tree

NAMESPACE_FIELDS = [
    (kvfs_fields({"model_name": "bench/llama-8b", "dtype": "bfloat16"}), "kvfs", [None]),
    (kvfs_fields({"model_name": "bench/mistral-7b", "dtype": "bfloat16"}), "kvfs", [None]),
    ({"model_name": "bench/qwen-32b", "dtype": "bfloat16"}, "bin", [0, 1, 2, 3]),
]


def make_tree(root: Path, files: int, seed: int = 7) -> None:
    """Zero-byte block files, created directory by directory; a marker beside the root says it is complete."""
    marker = root.with_name(root.name + ".complete")
    if marker.exists() and marker.read_text().strip() == str(files) and root.is_dir():
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = random.Random(seed)
    slots: list[tuple[str, int | None, str]] = []
    for fields, fmt, ranks in NAMESPACE_FIELDS:
        write_namespace_config(root, fields)
        slots += [(namespace_name(fields), rank, fmt) for rank in ranks]
    keys = [
        BlockKey(ns, rank, 0, f"{rng.getrandbits(128):032x}", fmt)  # type: ignore[arg-type]
        for ns, rank, fmt in (slots[i % len(slots)] for i in range(files))
    ]
    paths = sorted(k.relpath() for k in keys)
    t0 = time.perf_counter()
    made_dirs: set[str] = set()
    for i, rel in enumerate(paths):
        parent = rel.rpartition("/")[0]
        if parent not in made_dirs:
            os.makedirs(root / parent, exist_ok=True)
            made_dirs.add(parent)
        os.close(os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
        if i and i % 100_000 == 0:
            print(f"  created {i:,} files ({i / (time.perf_counter() - t0):,.0f}/s)", flush=True)
    marker.write_text(str(files))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_find(root: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of GNU find over the tree."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(
        ["find", str(root), "-type", "f", "-printf", "%s %A@\n"], stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - t0, _children_cpu() - cpu0


def time_walk(root: Path, threads: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, blocks found) of kvfs's walk."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = sum(len(batch.found) for batch in walk_tree(root, threads=threads))
    return time.perf_counter() - t0, time.process_time() - cpu0, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.scan", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="walker threads (default: kvfs's choice)")
    parser.add_argument("--dir", default=None, help="tree location (default bench-data/scan-<files>)")
    parser.add_argument("--no-db", action="store_true", help="only find vs walk (skip the catalog scans)")
    args = parser.parse_args(argv)
    if shutil.which("find") is None:
        print("GNU find not found", file=sys.stderr)
        return 2
    root = Path(args.dir or f"bench-data/scan-{args.files}").resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    if args.threads is None:
        args.threads = default_threads(root.parent)
    print(
        f"scan bench: {args.files:,} files under {root}, {args.threads} threads, {args.runs} runs", flush=True
    )
    make_tree(root, args.files)
    time_find(root)  # warm the dentry/inode caches once: every figure below is a warm-cache walk

    finds: list[float] = []
    walks: list[float] = []
    find_cpu: list[float] = []
    walk_cpu: list[float] = []
    scans: list[float] = []
    rescans: list[float] = []
    for run in range(args.runs):
        find_s, find_c = time_find(root)
        walk_s, walk_c, n = time_walk(root, args.threads)
        finds.append(find_s)
        walks.append(walk_s)
        find_cpu.append(find_c)
        walk_cpu.append(walk_c)
        if n != args.files:
            print(f"walk found {n:,} blocks, expected {args.files:,}", file=sys.stderr)
            return 1
        line = (
            f"  run {run + 1}: find {find_s:.2f}s ({find_c:.2f}s CPU), walk {walk_s:.2f}s ({walk_c:.2f}s CPU)"
        )
        if not args.no_db:
            with (
                tempfile.TemporaryDirectory(prefix="kvfs-bench-scan-") as tmp,
                Catalog.open(f"sqlite:///{tmp}/catalog.db", root=root) as catalog,
            ):
                first = scan_tree(root, catalog, threads=args.threads)
                again = scan_tree(root, catalog, threads=args.threads)
            if first.files != args.files or again.blocks_added != 0:
                print(
                    f"scan found {first.files:,} blocks, rescan added {again.blocks_added}", file=sys.stderr
                )
                return 1
            scans.append(first.duration_s)
            rescans.append(again.duration_s)
            line += f", scan {first.duration_s:.2f}s, rescan {again.duration_s:.2f}s"
        print(line, flush=True)

    def rate(seconds: list[float]) -> tuple[float, float]:
        med = statistics.median(seconds)
        return med, args.files / med

    find_s, find_r = rate(finds)
    walk_s, walk_r = rate(walks)
    print(f"find -type f -printf '%s %A@' (baseline) {find_r:>12,.0f} files/s ({find_s:.2f} s)")
    print(
        f"walk_tree (readdir+lstat+parse)          {walk_r:>12,.0f} files/s ({walk_s:.2f} s)  {walk_r / find_r:.2f}x find"
    )
    if scans:
        scan_s, scan_r = rate(scans)
        rescan_s, rescan_r = rate(rescans)
        print(
            f"scan_tree, new SQLite catalog            {scan_r:>12,.0f} files/s ({scan_s:.2f} s)  {scan_r / find_r:.2f}x find"
        )
        print(
            f"scan_tree, rescan (all rows known)       {rescan_r:>12,.0f} files/s ({rescan_s:.2f} s)  "
            f"{rescan_r / find_r:.2f}x find"
        )
    cpu_ratio = statistics.median(find_cpu) / statistics.median(walk_cpu)
    print(
        f"CPU seconds: find {statistics.median(find_cpu):.2f}, walk {statistics.median(walk_cpu):.2f} "
        f"(walk at {cpu_ratio:.2f}x find's speed per CPU second; steadier than wall time on a loaded machine)"
    )
    ratio = walk_r / find_r
    print(f"RATIO walk/find (wall) = {ratio:.2f}x (goal >= 0.8x): {'PASS' if ratio >= 0.8 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
