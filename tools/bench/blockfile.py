"""Block file store/load throughput next to raw writes and reads of the same bytes (the I/O floor).

    python -m tools.bench.blockfile [--block-mib 2] [--blocks 64] [--runs 5] [--piece-kib K] [--dir DIR]
                                   [--direct] [--json]

It measures whichever block-file path this process runs (kvfs.nativeio: the compiled one where it is built;
`KVFS_NATIVE_IO=0` for the Python one) and prints which, and microseconds a file next to GB/s (small payloads
measure the per-file cost: the system calls and the Python around them).

Per run, `--blocks` payloads of `--block-mib` MiB are:
* raw: written with one `pwrite` each to a temp file, renamed (vLLM's fs tier does no more), then read back;
* kvfs: published with `store_block` (header, xxh3, O_EXCL temp, rename) and read back with `load_block` into a
  preallocated buffer (header validation + xxh3 of the payload).
Reads come from the page cache on a local disk unless `--direct` (O_DIRECT for both, when the filesystem
allows it), so they show the CPU cost of validation.  Medians of `--runs`; GB/s = 10^9 bytes/s of payload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvfs import blockfile, nativeio
from kvfs.blockfile import BlockIdentity, aligned_buffer, load_block, probe_o_direct, store_block

IDENT = BlockIdentity(hashlib.sha256(b"bench").digest(), b"k" * 36)


def run_once(directory: Path, payload: memoryview, blocks: int, direct: bool) -> dict[str, float]:
    n = len(payload)
    flags = os.O_DIRECT if direct else 0
    raw_dir, kvfs_dir = directory / "raw", directory / "kvfs"
    raw_dir.mkdir()
    kvfs_dir.mkdir()
    t0 = time.perf_counter()
    for i in range(blocks):
        tmp, final = raw_dir / f"{i}.bin_x.tmp", raw_dir / f"{i}.bin"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o660)
        os.pwrite(fd, payload, 0)
        os.close(fd)
        os.rename(tmp, final)
    raw_store = time.perf_counter() - t0
    out = memoryview(aligned_buffer(n))
    t0 = time.perf_counter()
    for i in range(blocks):
        fd = os.open(raw_dir / f"{i}.bin", os.O_RDONLY | flags)
        os.preadv(fd, [out[:n]], 0)
        os.close(fd)
    raw_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(blocks):
        if store_block(kvfs_dir / f"{i}.kvfs", payload, IDENT, direct=direct).outcome != "stored":
            raise SystemExit("store failed")
    kvfs_store = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(blocks):
        if not load_block(kvfs_dir / f"{i}.kvfs", IDENT, out, direct=direct).ok:
            raise SystemExit("load failed")
    kvfs_load = time.perf_counter() - t0
    shutil.rmtree(raw_dir)
    shutil.rmtree(kvfs_dir)
    total = n * blocks / 1e9
    return {
        "raw_store_gbps": total / raw_store,
        "kvfs_store_gbps": total / kvfs_store,
        "raw_load_gbps": total / raw_load,
        "kvfs_load_gbps": total / kvfs_load,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.blockfile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--block-mib", type=float, default=2, help="payload size in MiB (default 2; 0.0625 = 64 KiB)"
    )
    parser.add_argument("--blocks", type=int, default=64, help="blocks per run (default 64)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions; medians are reported (default 5)")
    parser.add_argument("--dir", default=None, help="where files are written (default: a temp dir)")
    parser.add_argument("--direct", action="store_true", help="O_DIRECT for kvfs and raw I/O alike")
    parser.add_argument(
        "--piece-kib",
        type=int,
        default=None,
        help=f"checksum/I/O piece size in KiB (default: blockfile's, {blockfile.PIECE_BYTES >> 10})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.piece_kib:
        blockfile.PIECE_BYTES = args.piece_kib << 10
    base = Path(tempfile.mkdtemp(prefix="kvfs-bench-blockfile-", dir=args.dir))
    direct = bool(args.direct and probe_o_direct(base))
    payload = memoryview(aligned_buffer(int(args.block_mib * (1 << 20))))
    payload[:] = os.urandom(len(payload))
    try:
        runs = []
        for r in range(args.runs):
            run_dir = base / str(r)
            run_dir.mkdir()
            runs.append(run_once(run_dir, payload, args.blocks, direct))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    med["store_vs_raw"] = med["kvfs_store_gbps"] / med["raw_store_gbps"]
    med["load_vs_raw"] = med["kvfs_load_gbps"] / med["raw_load_gbps"]
    med["direct"] = float(direct)
    med["piece_kib"] = float(blockfile.PIECE_BYTES >> 10)
    med["native"] = float(nativeio.MODULE is not None)
    per_file = {
        k: len(payload) / 1e9 / med[f"{k}_gbps"] * 1e6
        for k in ("raw_store", "kvfs_store", "raw_load", "kvfs_load")
    }
    if args.json:
        print(json.dumps(med, sort_keys=True))
        return 0
    mode = "O_DIRECT" if direct else "buffered"
    print(
        f"{args.blocks} x {args.block_mib} MiB blocks, {mode}, {blockfile.PIECE_BYTES >> 10} KiB pieces,"
        f" medians of {args.runs} runs; compiled block-file path: {nativeio.STATUS}"
    )
    print(
        f"  store: kvfs {med['kvfs_store_gbps']:6.2f} GB/s ({per_file['kvfs_store']:.1f} us a file), raw "
        f"write+rename {med['raw_store_gbps']:6.2f} GB/s ({per_file['raw_store']:.1f} us)"
        f"  -> {med['store_vs_raw']:.2f}x"
    )
    print(
        f"  load:  kvfs {med['kvfs_load_gbps']:6.2f} GB/s ({per_file['kvfs_load']:.1f} us a file), raw read "
        f"{med['raw_load_gbps']:6.2f} GB/s ({per_file['raw_load']:.1f} us)  -> {med['load_vs_raw']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
