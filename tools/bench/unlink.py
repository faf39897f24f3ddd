"""Root-confined deletion speed: `RootGuard.unlink_many` next to a raw `os.unlink` loop over the same tree.

    python -m tools.bench.unlink [--files 20000] [--files-per-dir 1] [--runs 3] [--dir DIR] [--json]

Each run builds two identical trees in the block layout (`<ns>/<hhh>/<hh>_g0/<hash>.kvfs`, random hashes, so
with the default `--files-per-dir 1` nearly every file has its own leaf directory, as in a large real tree) and
times deleting every file: with a plain `os.unlink(path)` loop (the baseline: one syscall per file, no checks,
one thread) and with `RootGuard.unlink_many` (O_NOFOLLOW directory walk with cached descriptors, lstat,
unlinkat; `--workers` threads), in gc-sized batches, alternating raw and guard batch by batch so that the load
of a shared machine drifts over both alike.  Goal (the evictor relies on it): >= 0.8x the raw loop.  Medians of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvfs.safety import DEFAULT_WORKERS, RootGuard

NAMESPACE = "org_llama-8b_0123456789ab_r0"
GOAL = 0.8


def build_tree(root: Path, n: int, per_dir: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rels = []
    for _ in range(0, n, per_dir):
        prefix = f"{rng.getrandbits(20):05x}"
        directory = f"{NAMESPACE}/{prefix[:3]}/{prefix[3:5]}_g0"
        os.makedirs(root / directory, exist_ok=True)
        for _ in range(per_dir):
            name = f"{prefix}{rng.getrandbits(236):059x}.kvfs"
            rel = f"{directory}/{name}"
            os.close(os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
            rels.append(rel)
    return rels[:n]


def time_raw(root: Path, rels: list[str]) -> float:
    paths = [os.path.join(root, rel) for rel in rels]  # built before timing, like the guard's input
    unlink = os.unlink
    t0 = time.perf_counter()
    for p in paths:
        unlink(p)
    return time.perf_counter() - t0


def time_guard(root: Path, rels: list[str], workers: int) -> float:
    guard = RootGuard(root)
    t0 = time.perf_counter()
    stats = guard.unlink_many(rels, workers=workers)
    elapsed = time.perf_counter() - t0
    if stats.deleted != len(rels):
        raise SystemExit(f"guard deleted {stats.deleted} of {len(rels)}: {stats}")
    return elapsed


def interleaved(
    raw_root: Path,
    raw_rels: list[str],
    guard_root: Path,
    guard_rels: list[str],
    chunk: int,
    workers: int,
    flip: bool,
) -> tuple[float, float]:
    """Total seconds (raw, guard) deleting both trees chunk by chunk, alternating, so load drift hits both."""
    raw_total = guard_total = 0.0
    for i in range(0, len(raw_rels), chunk):
        steps = [("raw", i), ("guard", i)]
        for which, start in reversed(steps) if flip else steps:
            if which == "raw":
                raw_total += time_raw(raw_root, raw_rels[start : start + chunk])
            else:
                guard_total += time_guard(guard_root, guard_rels[start : start + chunk], workers)
        flip = not flip
    return raw_total, guard_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.unlink", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="files per tree (default 20000)")
    parser.add_argument(
        "--files-per-dir", type=int, default=1, help="files sharing a leaf directory (default 1)"
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument(
        "--batch", type=int, default=1000, help="paths per unlink_many call (gc's batch size)"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="unlink_many threads (default: its default, 1)"
    )
    parser.add_argument("--dir", default=None, help="where the trees are built (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="kvfs-bench-unlink-", dir=args.dir))
    raw_s: list[float] = []
    guard_s: list[float] = []
    try:
        for run in range(args.runs):
            raw_root, guard_root = base / f"raw-{run}", base / f"guard-{run}"
            raw_rels = build_tree(raw_root, args.files, args.files_per_dir, seed=run)
            guard_rels = build_tree(guard_root, args.files, args.files_per_dir, seed=run)
            raw, guard = interleaved(
                raw_root, raw_rels, guard_root, guard_rels, args.batch, args.workers, flip=bool(run % 2)
            )
            raw_s.append(raw)
            guard_s.append(guard)
            shutil.rmtree(raw_root)
            shutil.rmtree(guard_root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    raw_rate = args.files / statistics.median(raw_s)
    guard_rate = args.files / statistics.median(guard_s)
    result = {
        "files": args.files,
        "files_per_dir": args.files_per_dir,
        "batch": args.batch,
        "workers": args.workers,
        "raw_unlink_per_s": raw_rate,
        "guard_unlink_per_s": guard_rate,
        "ratio": guard_rate / raw_rate,
        "goal": GOAL,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(
        f"{args.files} files, {args.files_per_dir} per leaf directory, batches of {args.batch},"
        f" {args.workers} workers, medians of {args.runs} runs"
    )
    print(f"  raw os.unlink loop (baseline)   {raw_rate:10,.0f} files/s")
    print(
        f"  RootGuard.unlink_many           {guard_rate:10,.0f} files/s   {result['ratio']:.2f}x raw"
        f" (goal >= {GOAL}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
