"""Where a load's time goes: the same files read at the same thread count, one step of the connector's load path
added at a time (GPU machine, no vLLM needed):

    python -m tools.datapath.ladder --threads 8,16

  raw               open + one preadv of the whole file into a pageable buffer + close (the baseline)
  bare staging      the same into pinned staging, then one host-to-device copy and a wait
  + load_block      the block-file reader (header parse and identity checks) instead of the bare preadv
  + device hash     the GPU hashes the payload, 8 bytes a piece come back, the load is settled on the host
  + scatter         the Triton scatter into the KV cache and a second wait (everything a safe load does)
  IoPool            the real pool (its queue, metrics, completion bookkeeping)

Each figure is the median of `--rounds` rounds of GB/s, and its ratio to raw in the same round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch

from connector.iopool import DeviceChecksums, FileOp
from kvfs.blockfile import HEADER_SIZE, load_block, settle_load
from tools.datapath.bench import Bench


class _Thread:
    def __init__(self, nbytes: int) -> None:
        self.host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.mv = memoryview(self.host.numpy())
        self.dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        self.stream = torch.cuda.Stream()
        self.done = torch.cuda.Event(blocking=True)
        self.hash = DeviceChecksums(torch.device("cuda"), nbytes)
        self.raw = bytearray(nbytes + HEADER_SIZE)


def _wait(t: _Thread) -> None:
    t.done.record(t.stream)
    t.done.synchronize()


def raw(t: _Thread, op: FileOp) -> None:
    fd = os.open(op.path, os.O_RDONLY)
    try:
        os.preadv(fd, [t.raw], 0)
    finally:
        os.close(fd)


def bare(t: _Thread, op: FileOp) -> None:
    fd = os.open(op.path, os.O_RDONLY)
    try:
        os.preadv(fd, [t.mv[: op.nbytes]], HEADER_SIZE)
    finally:
        os.close(fd)
    with torch.cuda.stream(t.stream):
        t.dev[: op.nbytes].copy_(t.host[: op.nbytes], non_blocking=True)
        _wait(t)


def reader(t: _Thread, op: FileOp) -> None:
    n = op.nbytes
    assert load_block(op.path, op.ident, t.mv[:n], verify=False).ok
    with torch.cuda.stream(t.stream):
        t.dev[:n].copy_(t.host[:n], non_blocking=True)
        _wait(t)


def hashed(t: _Thread, op: FileOp) -> None:
    n = op.nbytes
    result = load_block(op.path, op.ident, t.mv[:n], verify=False)
    with torch.cuda.stream(t.stream):
        t.dev[:n].copy_(t.host[:n], non_blocking=True)
        pieces = t.hash.launch(t.dev[:n])
        _wait(t)
    assert settle_load(result, t.hash.checksum(pieces, t.mv[:n])).ok


def scattered(t: _Thread, op: FileOp) -> None:
    hashed(t, op)
    with torch.cuda.stream(t.stream):
        op.copier.scatter(t.dev[: op.nbytes], op.block_ids, file_blocks=op.file_blocks, first=op.first)
        _wait(t)


def _run(threads: list[_Thread], ops: list[FileOp], fn: Callable[[_Thread, FileOp], None]) -> float:
    queue = list(ops)
    lock = threading.Lock()

    def work(t: _Thread) -> None:
        while True:
            with lock:
                if not queue:
                    return
                op = queue.pop()
            fn(t, op)

    workers = [threading.Thread(target=work, args=(t,)) for t in threads]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(op.nbytes for op in ops) / (time.perf_counter() - started) / 1e9


def _measure(bench: Bench, root: str, count: int, rounds: int) -> list[tuple[str, float, float]]:
    """(step, median GB/s, median ratio to raw in the same round) for `count` threads."""
    pool = bench.pool(count)
    try:
        pool.submit(1, bench.ops(root, False, 1), is_load=False)
        if not pool.wait([1], timeout=300):
            raise RuntimeError("the pool did not finish the stores")
        pool.take_finished()
        ops = bench.ops(root, True, 2) * 2
        threads = [_Thread(bench.file_bytes) for _ in range(count)]
        jobs = iter(range(3, 1 << 30))

        def through_pool() -> float:
            job = next(jobs)
            pool_ops = bench.ops(root, True, job) * 2  # an operation names its job
            started = time.perf_counter()
            pool.submit(job, pool_ops, is_load=True)
            if not pool.wait([job], timeout=300):
                raise RuntimeError("the pool did not finish the loads")
            assert all(d.success for d in pool.take_finished())
            return sum(op.nbytes for op in pool_ops) / (time.perf_counter() - started) / 1e9

        steps: list[tuple[str, Callable[[], float]]] = [
            ("raw", lambda: _run(threads, ops, raw)),
            ("bare staging", lambda: _run(threads, ops, bare)),
            ("+ load_block", lambda: _run(threads, ops, reader)),
            ("+ device hash", lambda: _run(threads, ops, hashed)),
            ("+ scatter", lambda: _run(threads, ops, scattered)),
            ("IoPool", through_pool),
        ]
        rates: dict[str, list[float]] = {name: [] for name, _ in steps}
        ratios: dict[str, list[float]] = {name: [] for name, _ in steps}
        for _ in range(rounds):
            base = 0.0
            for name, step in steps:
                rate = step()
                base = base or rate
                rates[name].append(rate)
                ratios[name].append(rate / base)
    finally:
        pool.shutdown()
    return [(name, statistics.median(rates[name]), statistics.median(ratios[name])) for name, _ in steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="8,16")
    parser.add_argument("--files", type=int, default=64, help="32 MiB files (each round reads them twice)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tools.datapath.ladder needs a CUDA GPU")
        return 1
    bench = Bench(
        argparse.Namespace(
            cpu=False, files=args.files, no_triton=False, reps=1, cpu_checksums=False, no_graphs=False
        )
    )
    root = "/dev/shm/kvfs-ladder"
    os.makedirs(root, exist_ok=True)
    bench.clear(root)
    try:
        for count in (int(x) for x in args.threads.split(",")):
            print(f"threads {count}:")
            for name, rate, ratio in _measure(bench, root, count, args.rounds):
                print(f"  {name:14s} {rate:5.1f} GB/s  {ratio:.2f}x raw")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
