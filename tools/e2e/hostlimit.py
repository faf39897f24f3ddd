"""The host's own limit for a file-tier load, measured on the very files a load just read, with the same threads:
what kvfs's load GB/s is divided by in the end-to-end table.

* `read`: each thread reads whole files (one `preadv` each, as `kvfs.blockfile` reads an unverified payload) into
  its own pinned buffer, taking the next file from a shared queue: the raw parallel read into pinned memory;
* `read_h2d`: the same, then each file copied to the GPU on the thread's own stream from two pinned slots (the
  read of the next file overlaps the copy of the last): the staged load with no checksum, no scatter, no Python
  of kvfs's — the bound for kvfs's staged path;
* `read_first`, `read_h2d_first`: the same two, each on fresh copies of (up to `first_files` of) the files, written
  as a store writes them (one buffered `pwritev` from pinned memory) and read once: the first read of a file
  since it was written.  On tmpfs that read activates every page on the page cache's LRU lists under its lock
  and runs 20-35% slower than later reads of the same bytes (docs/benchmarks.md), so a hit that reads files just
  written is compared with these, later hits with `read` / `read_h2d` (`first_error` instead where the copies
  cannot be written: a full or read-only filesystem);
* for what keeps one thread at its rate: `read_1t` (one thread alone), `read_2mib` (the same threads, 2 MiB
  `preadv`s instead of one per file), `read_pageable` (fresh pageable buffers: the page faults pinned staging
  avoids), and `memcpy` (the same threads copying pinned memory to pinned memory with `memmove`, the GIL released:
  the memory system's copy rate, which a page-cache read — a copy — cannot beat).
Pure torch + os; runs on CPU (no `read_h2d` there) for the tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

MIB = 1 << 20


def _buffers(n: int, nbytes: int, *, pinned: bool) -> list[torch.Tensor]:
    return [torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(n)]


def _parallel(
    paths: Sequence[str],
    threads: int,
    work: Callable[[int, str], int],
    setup: Callable[[int], None] | None = None,
    finish: Callable[[int], None] | None = None,
) -> float:
    """GB/s of `work(thread_index, path) -> bytes` over `paths`, each thread taking the next path from a shared
    list; the clock runs from a barrier all threads passed (set-up excluded) to the last one's end (`finish`,
    such as waiting for its copies, included)."""
    lock = threading.Lock()
    queue = list(reversed(paths))
    total = [0]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            if setup is not None:
                setup(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        barrier.wait()
        done = 0
        while True:
            with lock:
                if not queue:
                    break
                path = queue.pop()
            try:
                done += work(i, path)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                break
        if finish is not None:
            finish(i)
        with lock:
            total[0] += done

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return total[0] / elapsed / 1e9 if elapsed > 0 else 0.0


def _read_into(path: str, buf: memoryview, chunk: int | None = None) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        view = buf[:size]
        got = 0
        while got < size:
            end = size if chunk is None else min(size, got + chunk)
            n = os.preadv(fd, [view[got:end]], got)
            if n <= 0:
                break
            got += n
        return got
    finally:
        os.close(fd)


def measure(
    paths: Sequence[str],
    threads: int,
    *,
    device: torch.device | None = None,
    reps: int = 3,
    single_files: int = 16,
    first_files: int = 128,
) -> dict[str, Any]:
    """The host-limit figures (GB/s, medians of `reps`) for reading `paths` with `threads` threads."""
    paths = list(paths)
    if not paths or threads <= 0:
        return {}
    size = max(os.path.getsize(p) for p in paths)
    cuda = device is not None and device.type == "cuda"
    pinned = _buffers(threads, size, pinned=cuda)
    views = [memoryview(b.numpy()) for b in pinned]
    out: dict[str, Any] = {"threads": threads, "files": len(paths), "file_bytes": size}

    def med(fn: Callable[[], float]) -> float:
        return statistics.median(fn() for _ in range(reps))

    def read(files: Sequence[str]) -> float:  # each thread into its own pinned view
        return _parallel(files, threads, lambda i, p: _read_into(p, views[i]))

    out["read"] = med(lambda: read(paths))
    out["read_1t"] = med(lambda: _parallel(paths[:single_files], 1, lambda i, p: _read_into(p, views[0])))
    out["read_2mib"] = med(lambda: _parallel(paths, threads, lambda i, p: _read_into(p, views[i], 2 * MIB)))

    fresh: dict[int, memoryview] = {}

    def fresh_read(i: int, p: str) -> int:
        # A new pageable buffer for every file: each page faulted in by the read, as with unpinned staging.
        fresh[i] = memoryview(bytearray(size))
        return _read_into(p, fresh[i])

    out["read_pageable"] = med(lambda: _parallel(paths, threads, fresh_read))
    sources = _buffers(threads, size, pinned=cuda)

    def copy(i: int, _p: str) -> int:
        ctypes.memmove(pinned[i].data_ptr(), sources[i].data_ptr(), size)  # ctypes calls release the GIL
        return size

    out["memcpy"] = med(lambda: _parallel(paths, threads, copy))
    if cuda:
        assert device is not None
        out["read_h2d"] = med(lambda: _read_h2d(paths, threads, device, size))
    firsts = paths[:first_files]
    if firsts:
        out["first_files"] = len(firsts)
        # Both first-read figures or neither: `first_limit_of` falls back from the H2D one to the raw one, so a
        # raw figure left alone would stand in for a GPU load's bound.
        first: dict[str, float] = {}
        try:
            first["read_first"] = med(lambda: _on_fresh_copies(firsts, threads, views, read))
            if cuda:
                assert device is not None
                first["read_h2d_first"] = med(
                    lambda: _on_fresh_copies(
                        firsts, threads, views, lambda c: _read_h2d(c, threads, device, size)
                    )
                )
            out.update(first)
        except OSError as exc:
            # The copies need room and a writable directory beside the files (a full or read-only root): the
            # figures above stand without them.
            out["first_error"] = repr(exc)
    return out


def _on_fresh_copies(
    paths: Sequence[str], threads: int, views: Sequence[memoryview], probe: Callable[[list[str]], float]
) -> float:
    """`probe` run once on new copies of `paths`, written beside them (one directory of their filesystem, made
    and removed here) as a store writes a file: read into pinned memory, then one buffered `pwritev`."""
    scratch = tempfile.mkdtemp(prefix=".kvfs-hostlimit-", dir=os.path.dirname(os.path.abspath(paths[0])))
    copies = [os.path.join(scratch, f"{i}.copy") for i in range(len(paths))]
    sources = dict(zip(copies, paths, strict=True))

    def copy(i: int, dst: str) -> int:
        n = _read_into(sources[dst], views[i])
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return os.pwritev(fd, [views[i][:n]], 0)
        finally:
            os.close(fd)

    try:
        _parallel(copies, threads, copy)
        return probe(copies)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_h2d(paths: Sequence[str], threads: int, device: torch.device, size: int) -> float:
    """GB/s of reading `paths` into two pinned slots per thread and copying each file on to the GPU on the
    thread's own stream (the next read overlaps the last copy; the clock stops when every copy is done)."""
    slots = [_buffers(2, size, pinned=True) for _ in range(threads)]
    state: dict[int, Any] = {}

    def setup(i: int) -> None:
        torch.cuda.set_device(device)
        state[i] = {
            "stream": torch.cuda.Stream(device=device),
            "dev": torch.empty(size, dtype=torch.uint8, device=device),
            "events": [torch.cuda.Event(blocking=True), torch.cuda.Event(blocking=True)],
            "views": [memoryview(s.numpy()) for s in slots[i]],
            "next": 0,
            "used": [False, False],
        }

    def read_h2d(i: int, p: str) -> int:
        s = state[i]
        k = s["next"]
        s["next"] = 1 - k
        if s["used"][k]:
            s["events"][k].synchronize()  # the slot's last copy is done before it is read into again
        n = _read_into(p, s["views"][k])
        with torch.cuda.stream(s["stream"]):
            s["dev"][:n].copy_(slots[i][k][:n], non_blocking=True)
            s["events"][k].record(s["stream"])
        s["used"][k] = True
        return n

    return _parallel(paths, threads, read_h2d, setup, lambda i: state[i]["stream"].synchronize())


def limit_of(figures: dict[str, Any]) -> float | None:
    """The bound a staged load is compared with: raw read plus the copy to the GPU where measured, else the raw
    read."""
    return figures.get("read_h2d") or figures.get("read")


def first_limit_of(figures: dict[str, Any]) -> float | None:
    """The same bound for a load of files read for the first time since they were written."""
    return figures.get("read_h2d_first") or figures.get("read_first")


def drop_from_page_cache(paths: Sequence[str]) -> int:
    """Write back and drop `paths` from the page cache (fsync + POSIX_FADV_DONTNEED per file, as tier_bench does:
    only these files, no root needed); the bytes dropped."""
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def measure_cold(paths: Sequence[str], threads: int, *, device: torch.device | None = None) -> dict[str, Any]:
    """The raw parallel read of `paths` from a cold page cache (dropped before each figure), into pinned memory
    and, on CUDA, on to the GPU: what a cold kvfs load is compared with.  One pass each (a second would be warm)."""
    paths = list(paths)
    if not paths or threads <= 0:
        return {}
    size = max(os.path.getsize(p) for p in paths)
    cuda = device is not None and device.type == "cuda"
    views = [memoryview(b.numpy()) for b in _buffers(threads, size, pinned=cuda)]
    out: dict[str, Any] = {"threads": threads, "files": len(paths)}
    drop_from_page_cache(paths)
    out["cold_read"] = _parallel(paths, threads, lambda i, p: _read_into(p, views[i]))
    if cuda:
        assert device is not None
        drop_from_page_cache(paths)
        out["cold_read_h2d"] = _read_h2d(paths, threads, device, size)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The probe on its own, on files it writes (`--dir`, removed after): the host's read figures without an
    engine, e.g. the first read of just-written files against reading them again.

        python -m tools.e2e.hostlimit --dir /dev/shm/kvfs-hostlimit --files 32 --mib 32 --threads 2
    """
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m tools.e2e.hostlimit", description=main.__doc__)
    p.add_argument(
        "--dir", required=True, help="a new directory on the filesystem to measure (removed after)"
    )
    p.add_argument("--files", type=int, default=32)
    p.add_argument("--mib", type=int, default=32, help="file size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    os.makedirs(args.dir)
    try:
        payload = os.urandom(MIB) * args.mib
        paths = [os.path.join(args.dir, f"{i}.kvfs") for i in range(args.files)]
        for path in paths:
            with open(path, "wb") as f:
                f.write(payload)
        device = torch.device("cuda", 0) if torch.cuda.is_available() else None
        got = measure(paths, args.threads, device=device, reps=args.reps)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(got, indent=1))
    first, again = first_limit_of(got), limit_of(got)
    if first and again:
        print(
            f"first read of just-written files {first:.2f} GB/s, read again {again:.2f} GB/s: {first / again:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
