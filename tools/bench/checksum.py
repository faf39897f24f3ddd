"""Block checksum speed on one core, next to memcpy bandwidth (the physical limit) and zlib CRC32 (a baseline).

    python -m tools.bench.checksum [--mib 64] [--block-mib 2] [--runs 7] [--json]

Figures, medians of `--runs`:
* memcpy GB/s: copying the buffer into a preallocated one (`memoryview` slice assignment = C memcpy);
* xxh3-64 GB/s (`kvfs.checksum.checksum64`), over the whole buffer and per block-sized slice (per-call cost);
* zlib.crc32 GB/s over the same bytes;
* GIL, for kvfs's checksum64 (streaming `update()` above 64 KiB), python-xxhash's one-shot
  `xxh3_64_intdigest`, and zlib.crc32: (a) while another thread hashes the whole buffer 3 times, the longest stall of a Python loop in the main
  thread, next to the duration of one hash call (over a `--gil-mib` buffer): a stall >= one call means the hash holds the GIL for the whole
  call; stalls of a few ms (the switch interval) mean it releases it.  Robust on a busy machine.
  (b) the same work split over 2 threads: aggregate / 1-thread speed-up (~2x only with 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable

import xxhash

from kvfs.checksum import checksum64

GB = 1e9


def _timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _threads(fn: Callable[[memoryview], object], parts: list[memoryview]) -> Callable[[], None]:
    def run() -> None:
        workers = [threading.Thread(target=fn, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return run


def gil_stall(fn: Callable[[memoryview], object], buf: memoryview) -> tuple[float, float]:
    """(one call's seconds, the main thread's longest stall while another thread makes 3 calls)."""
    t0 = time.perf_counter()
    fn(buf)
    call = time.perf_counter() - t0
    done = threading.Event()

    def work() -> None:
        for _ in range(3):
            fn(buf)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    last = time.perf_counter()
    stall = 0.0
    while not done.is_set():
        now = time.perf_counter()
        stall = max(stall, now - last)
        last = now
    worker.join()
    return call, stall


def measure(mib: int, block_mib: int, runs: int, gil_mib: int = 512) -> dict[str, float]:
    nbytes = mib << 20
    src = memoryview(bytearray(os.urandom(nbytes)))
    dst = memoryview(bytearray(nbytes))
    block = block_mib << 20
    blocks = [src[i : i + block] for i in range(0, nbytes, block)]
    halves = [src[: nbytes // 2], src[nbytes // 2 :]]

    def memcpy() -> None:
        dst[:] = src

    def xxh_blocks() -> None:
        for b in blocks:
            checksum64(b)

    def xxh_sequential_halves() -> None:
        for h in halves:
            checksum64(h)

    def crc_sequential_halves() -> None:
        for h in halves:
            zlib.crc32(h)

    memcpy()  # fault the destination pages in before timing
    result = {
        "bytes": float(nbytes),
        "memcpy_gbps": nbytes / _timed(memcpy, runs) / GB,
        "xxh3_gbps": nbytes / _timed(lambda: checksum64(src), runs) / GB,
        "xxh3_per_block_gbps": nbytes / _timed(xxh_blocks, runs) / GB,
        "crc32_gbps": nbytes / _timed(lambda: zlib.crc32(src), runs) / GB,
    }
    one_xxh = _timed(xxh_sequential_halves, runs)
    two_xxh = _timed(_threads(checksum64, halves), runs)
    one_crc = _timed(crc_sequential_halves, runs)
    two_crc = _timed(_threads(zlib.crc32, halves), runs)
    one_shot = xxhash.xxh3_64_intdigest
    one_oneshot = _timed(lambda: [one_shot(h) for h in halves], runs)
    two_oneshot = _timed(_threads(one_shot, halves), runs)
    # A buffer large enough that one call (>100 ms) dwarfs OS scheduling gaps on a busy machine.
    big = memoryview(bytearray(src[: 1 << 20]) * gil_mib)
    for name, fn in (("xxh3", checksum64), ("xxh3_oneshot", one_shot), ("crc32", zlib.crc32)):
        calls, stalls = zip(*(gil_stall(fn, big) for _ in range(3)), strict=True)
        result[f"{name}_call_ms"] = statistics.median(calls) * 1000
        result[f"{name}_main_thread_max_stall_ms"] = statistics.median(stalls) * 1000
    result["xxh3_oneshot_2threads_speedup"] = one_oneshot / two_oneshot
    result["xxh3_2threads_speedup"] = one_xxh / two_xxh
    result["crc32_2threads_speedup"] = one_crc / two_crc
    result["xxh3_vs_memcpy"] = result["xxh3_gbps"] / result["memcpy_gbps"]
    result["xxh3_vs_crc32"] = result["xxh3_gbps"] / result["crc32_gbps"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.checksum", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--mib", type=int, default=64, help="buffer size in MiB (default 64)")
    parser.add_argument(
        "--block-mib", type=int, default=2, help="block size for the per-block figure (default 2)"
    )
    parser.add_argument("--runs", type=int, default=7, help="repetitions; medians are reported (default 7)")
    parser.add_argument(
        "--gil-mib", type=int, default=512, help="buffer for the GIL stall test (default 512)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    r = measure(args.mib, args.block_mib, args.runs, args.gil_mib)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    print(f"buffer {args.mib} MiB, medians of {args.runs} runs, one core")
    print(f"  memcpy (limit)          {r['memcpy_gbps']:6.2f} GB/s")
    print(
        f"  xxh3-64                 {r['xxh3_gbps']:6.2f} GB/s   {r['xxh3_vs_memcpy']:.2f}x memcpy, "
        f"{r['xxh3_vs_crc32']:.1f}x crc32"
    )
    print(f"  xxh3-64 per {args.block_mib} MiB block  {r['xxh3_per_block_gbps']:6.2f} GB/s")
    print(f"  zlib.crc32 (baseline)   {r['crc32_gbps']:6.2f} GB/s")
    for name in ("xxh3", "xxh3_oneshot", "crc32"):
        call, stall = r[f"{name}_call_ms"], r[f"{name}_main_thread_max_stall_ms"]
        verdict = "HOLDS the GIL" if stall >= 0.8 * call else "releases the GIL"
        print(
            f"  GIL {name:12s}: one call {call:6.1f} ms, main-thread max stall {stall:6.1f} ms -> {verdict};"
            f" 2 threads / 1 thread {r[f'{name}_2threads_speedup']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
