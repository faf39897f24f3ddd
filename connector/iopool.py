"""The worker's I/O engine: a pool of threads moving whole chunks between the KV cache and block files.  Each
thread has two pinned staging slots and, on CUDA, one device staging buffer and a stream: it reads the next
load's file (or writes the last store's file) while the GPU copies, hashes and scatters the other slot's bytes,
so its file I/O seldom waits for the GPU.

On CUDA the payload checksums (algorithm 2 of `kvfs.checksum`) are computed by the GPU from device staging
(`connector.devhash`): a store writes its file without the CPU reading the payload, and a load copies the file's
bytes to the GPU, hashes them there and scatters them into the KV cache only once they match the
header.  Without Triton, or with `device_checksums=False`, the CPU hashes as it reads and writes.

Loads take priority over stores.  A store waits behind the compute stream through a CUDA event recorded at
submit time.  Stores queue under a time budget on the real backlog: a store is dropped at submit (counted by
reason, reported as not stored) only when the bytes queued ahead of it, at the pool's measured store bandwidth,
would take longer than the budget to write.  Time a store spends waiting for the GPU (the forward pass that
writes its KV, a long prefill beside it) is neither backlog nor storage time, so it never causes a drop; nor is a
one-time cost (a shape's first run compiles its kernels, its second captures a graph): such stores are no sample.
Failed loads are reported with the GPU blocks they should have filled, so the connector can have vLLM recompute
exactly those tokens.  No vLLM import: the GPU check and
the benchmark use this module on machines without vLLM.
"""

from __future__ import annotations

import logging
import os
import statistics
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import torch

from connector import devhash, metrics
from connector.copier import GroupCopier
from connector.graphs import GraphCache
from kvfs.blockfile import (
    HEADER_SIZE,
    MAX_PAYLOAD_LEN,
    BlockIdentity,
    Durability,
    LoadResult,
    MissReason,
    StoreOutcome,
    load_block,
    settle_load,
    store_block,
)
from kvfs.checksum import (
    HASH_PIECE_BYTES,
    PIECES_ALGO_ID,
    checksum64,
    combine_packed_digests,
    combine_piece_digests,
    payload_checksum,
    piece_digests,
)
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.journal import JournalWriter

log = logging.getLogger("kvfs.connector")


@dataclass(slots=True)
class FileOp:
    """One block file <-> `block_ids` of one KV group."""

    job_id: int
    is_load: bool
    path: str
    ident: BlockIdentity
    copier: GroupCopier
    block_ids: Sequence[int]
    # Chunk-relative index of block_ids[0] (loads: inside the file payload; stores: recorded in the identity).
    first: int
    # Blocks in the file payload (stores: len(block_ids)).
    file_blocks: int
    block_key: BlockKey | None = None
    # Index of the chunk in its request's prefix chain (0 = head), journaled with the store; -1 = unknown.
    chain_pos: int = -1
    # The block hash of the chunk before it in its request's chain (connector/chain.py), journaled with the
    # store: the catalog orphans a block's descendants when it goes, and supersedes branches left behind.
    parent_hash: str | None = None
    # The time the journal records of this store carry: its request's (connector/chain.py `request_time`), so a
    # chain's files finishing in any order stay one request to the evictor; None: the time the store finishes.
    stamp: float | None = None
    # Stores: a torch.cuda.Event recorded on the compute stream, which the gather waits for (on CPU, any object
    # with synchronize(), waited for before the gather).
    event: object | None = None
    # CPU pools only: the payload's own memory (a row of vLLM's CPU tier), read into and written from directly,
    # with no staging copy.  A load that fails validation leaves garbage there: only for memory its owner
    # discards when the load is reported failed (vLLM frees a failed promotion's CPU-tier slot).
    buffer: memoryview | None = None
    # The file's payload bytes: computed once here, on the submitting thread, not at each of the five uses on the
    # I/O thread (callers that know it pass it).
    nbytes: int = -1

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            self.nbytes = self.copier.payload_bytes(self.file_blocks)


@dataclass
class JobDone:
    job_id: int
    is_load: bool
    success: bool
    nbytes: int
    seconds: float
    failed_block_ids: list[int]
    files_ok: int = 0
    files_failed: int = 0


@dataclass
class _Job:
    is_load: bool
    remaining: int
    started: float
    nbytes: int = 0
    ok: int = 0
    failed: int = 0
    failed_block_ids: list[int] = field(default_factory=list)


class IoPool:
    def __init__(
        self,
        *,
        threads: int,
        max_file_bytes: int,
        device: torch.device,
        max_staging_bytes: int = 4 << 30,
        store_budget_s: float = 10.0,
        durability: Durability = Durability.NONE,
        direct: bool = False,
        file_mode: int = 0o660,
        journal: JournalWriter | None = None,
        device_checksums: bool = True,
        cuda_graphs: bool = True,
    ) -> None:
        self.cuda = device.type == "cuda"
        if (
            self.cuda and device.index is None
        ):  # "cuda" means the caller's current GPU; threads need its index
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.cuda_graphs = cuda_graphs
        # The digests are combined from their in-memory bytes, which are algorithm 2's only on little-endian hosts.
        little = sys.byteorder == "little"
        self.device_checksums = bool(self.cuda and device_checksums and devhash.HAS_TRITON and little)
        if self.device_checksums:
            problem = devhash.self_test(device)
            if problem is not None:
                log.warning(
                    "kvfs: GPU payload hashing failed its self-test (%s); hashing on the CPU", problem
                )
                metrics.DEVICE_HASH_DISABLED.inc()
                self.device_checksums = False
        # Two pinned host slots per thread, and on CUDA one device buffer they share.
        per_thread = max_file_bytes * (_SLOTS + (1 if self.cuda else 0))
        cap = max(1, max_staging_bytes // max(1, per_thread))
        if threads > cap:
            log.warning(
                "kvfs: %d I/O threads would need %d MiB of staging; capped to %d threads by max staging %d MiB",
                threads,
                threads * per_thread >> 20,
                cap,
                max_staging_bytes >> 20,
            )
        self.threads = max(1, min(threads, cap))
        self.max_file_bytes = max_file_bytes
        self.store_budget_s = store_budget_s
        self.durability = durability
        self.direct = direct
        self.file_mode = file_mode
        self.journal = journal
        self.staging_bytes = self.threads * per_thread
        metrics.STAGING_BYTES.set(self.staging_bytes)

        # CPU pools hash a payload after its one-call read (or before its one-call write).  With cores to spare
        # (fewer I/O threads than CPUs), large payloads are hashed on helper threads so that the I/O thread reads
        # or writes its next file meanwhile; with a thread per core the I/O threads keep every core busy already,
        # and a hand-off would only add context switches.
        helpers = 0 if self.cuda else len(os.sched_getaffinity(0)) - self.threads
        self._hasher = ThreadPoolExecutor(helpers, thread_name_prefix="kvfs-hash") if helpers > 0 else None
        # Payloads up to this size move in one step, hashed inside load_block / store_block piece by piece as they
        # are read or written: every payload that helpers will not hash (the pipeline's separate hash step only
        # pays where it overlaps the next file's I/O).  CPU pools only (a GPU pool hashes on the device): -1
        # there, one comparison per file either way.
        if self.cuda:
            self._inline_max = -1
        elif self._hasher is None:
            self._inline_max = MAX_PAYLOAD_LEN
        else:
            self._inline_max = _HELPER_MIN_BYTES - 1
        # One lock, two conditions: I/O threads wait on `_work` for operations, callers on `_cv` for finished jobs
        # (and thread set-up).  One condition for both woke every idle I/O thread at each finished job and each
        # submitted file: with 16 threads, 15 wake-ups (and GIL hand-offs) per file for nothing.
        # The per-file paths (submit, _next_op, _report, take_finished) enter the lock itself: a Condition's `with`
        # costs two Python calls.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._job_waiters = 0  # callers inside wait() / wait_progress(): a finished job notifies only them
        self._loads: deque[FileOp] = deque()
        self._stores: deque[FileOp] = deque()
        self._jobs: dict[int, _Job] = {}
        self._done: list[JobDone] = []
        # Seconds one I/O thread spends per stored byte (launching the copies, writing the file; not waiting for
        # the GPU): the measured store bandwidth behind the drop-at-submit estimate.  The median of the last
        # stores' samples, and 0 (nothing dropped) until 2 per thread have completed: a sample also counts every
        # moment the thread waited for the GIL, and a fresh engine's Triton compiles hold it for seconds at a
        # time, stalling every thread at once.  An average of 10% per sample, seeded by the first, took one such
        # burst for the storage's speed (0.07 GB/s against 2.2 GB/s a thread written) and dropped 64 of 508
        # chunks of a 128k prompt on disk (docs/benchmarks.md, issue 23).
        self._store_samples: deque[float] = deque(maxlen=_STORE_SAMPLES)
        self._store_s_per_byte = 0.0
        # Samples came in since the median was taken: it is taken again at the next submit of stores (once a job,
        # on the scheduler thread), not at every store's report under the lock all I/O threads share.
        self._estimate_stale = False
        self._queued_store_bytes = 0
        self._drop_log = _RateLimitedLog(60.0)
        self._stopping = False
        self._states: list[_ThreadState] = []
        self._set_up = 0  # threads past their set-up, with staging or without
        self._workers = [
            threading.Thread(target=self._run, name=f"kvfs-io-{i}", daemon=True) for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()

    def thread_staging(self, timeout_s: float) -> list[_ThreadState]:
        """The I/O threads' staging, once every thread has set up (a thread whose set-up failed has none), or what
        there is after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._set_up < self.threads and self._cv.wait(max(0.0, deadline - time.monotonic())):
                pass
            return list(self._states)

    def warm_up_loads(self, copiers: Sequence[GroupCopier], blocks: int, timeout_s: float = 30.0) -> int:
        """Run the load phases of a whole `blocks`-block chunk of each KV group twice on every staging slot (the
        first run compiles, the second captures the slot's CUDA graph), so that a process's first loads replay
        graphs as its later ones do.  Without it each slot's first two loads of a shape run eagerly and capture:
        a fresh engine's first hit (a new replica reading others' files) was ~45% slower than its later hits.
        The bytes moved are block 0's own, put back.  Call it before any operation is submitted: it uses the
        I/O threads' slots from this thread.  Returns the graphs captured (0 on CPU or with graphs off)."""
        if not (self.cuda and self.cuda_graphs):
            return 0
        states = self.thread_staging(timeout_s)
        before = self.captured_graphs()
        zeros = torch.zeros(blocks, dtype=torch.int64, device=self.device)
        ids = [0] * blocks
        for state in states:
            assert state.dev is not None and state.stream is not None
            with torch.cuda.device(self.device), torch.cuda.stream(state.stream):
                for slot in state.slots:
                    for copier in copiers:
                        n = copier.payload_bytes(blocks)
                        dev, host = state.dev[:n], slot.host[:n]
                        copier.gather(zeros, dev)  # block 0, `blocks` times: what the scatter writes back
                        host.copy_(dev, non_blocking=True)
                        for _ in range(2):
                            if slot.hashes is not None:
                                _copy_and_hash(slot, dev, host)
                                _scatter(slot, dev, copier, ids, blocks, 0)
                            else:
                                _copy_and_scatter(slot, dev, host, copier, ids, blocks, 0)
            state.stream.synchronize()
        return self.captured_graphs() - before

    # -- submission (called from the worker's main thread; never blocks on I/O) --

    def submit(self, job_id: int, ops: Sequence[FileOp], *, is_load: bool) -> None:
        now = time.monotonic()
        with self._lock:
            job = _Job(is_load=is_load, remaining=len(ops), started=now)
            self._jobs[job_id] = job
            if not ops:
                self._finish_locked(job_id, job)
                return
            if is_load:
                self._loads.extend(ops)
                self._work.notify(len(ops))
                return
            dropped: list[tuple[FileOp, float]] = []
            queued = 0
            budget = self.store_budget_s
            if budget:
                self._refresh_estimate_locked()
            # Seconds until each store would be written: the queued bytes ahead of it and its own, at the measured
            # per-thread bandwidth times the threads (computed inline: this loop runs for every file).
            s_per_byte = self._store_s_per_byte / self.threads
            for op in ops:
                wait = (self._queued_store_bytes + op.nbytes) * s_per_byte
                if budget and wait > budget:
                    dropped.append((op, wait))
                else:
                    self._stores.append(op)
                    self._queued_store_bytes += op.nbytes
                    queued += 1
            _SET_QUEUED_STORES(float(len(self._stores)))
            for op, wait in dropped:
                self._drop_locked(op, DropReason.BACKLOG, wait)
            self._work.notify(queued)

    def store_bandwidth(self) -> float:
        """The pool's measured store bandwidth in bytes/s (all threads; 0 until a store has completed)."""
        with self._cv:
            self._refresh_estimate_locked()
            return self._store_bandwidth_locked()

    def _refresh_estimate_locked(self) -> None:
        if self._estimate_stale:
            self._estimate_stale = False
            if len(self._store_samples) >= 2 * self.threads:
                self._store_s_per_byte = statistics.median(self._store_samples)

    def _store_bandwidth_locked(self) -> float:
        return self.threads / self._store_s_per_byte if self._store_s_per_byte else 0.0

    def _drop_locked(self, op: FileOp, reason: DropReason, wait_s: float) -> None:
        metrics.STORES.labels("dropped").inc()
        metrics.STORES_DROPPED.labels(str(reason)).inc()
        self._drop_log.event(
            "kvfs: %d store(s) dropped in the last minute (%s: %s would wait %.1f s for %d MiB queued at %.2f "
            "GB/s, over kvfs_store_budget %.1f s); those chunks are not reused",
            str(reason),
            op.path,
            wait_s,
            self._queued_store_bytes >> 20,
            self._store_bandwidth_locked() / 1e9,
            self.store_budget_s,
        )
        self._op_done_locked(op, ok=False, nbytes=0)

    # -- completion --

    def _op_done_locked(self, op: FileOp, *, ok: bool, nbytes: int) -> None:
        job = self._jobs.get(op.job_id)
        if job is None:  # an operation whose job was never submitted: a caller bug, never a dead I/O thread
            log.error("kvfs: finished operation of unknown job %d (%s)", op.job_id, op.path)
            return
        job.remaining -= 1
        job.nbytes += nbytes
        if ok:
            job.ok += 1
        else:
            job.failed += 1
            job.failed_block_ids.extend(int(b) for b in op.block_ids)
        if job.remaining == 0:
            self._finish_locked(op.job_id, job)

    def _finish_locked(self, job_id: int, job: _Job) -> None:
        del self._jobs[job_id]
        seconds = time.monotonic() - job.started
        (_LOAD_JOB_S if job.is_load else _STORE_JOB_S).observe(seconds)
        self._done.append(
            JobDone(
                job_id=job_id,
                is_load=job.is_load,
                success=job.failed == 0,
                nbytes=job.nbytes,
                seconds=seconds,
                failed_block_ids=job.failed_block_ids,
                files_ok=job.ok,
                files_failed=job.failed,
            )
        )
        if self._job_waiters:  # a Condition's notify is three Python calls, on every job's last file
            self._cv.notify_all()

    def take_finished(self) -> list[JobDone]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def wait(self, job_ids: Iterable[int], timeout: float | None = None) -> bool:
        """Block until none of `job_ids` is in flight (their results stay queued for take_finished)."""
        ids = set(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._job_waiters += 1
            try:
                while ids & self._jobs.keys():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cv.wait(remaining)
            finally:
                self._job_waiters -= 1
        return True

    def wait_progress(self, timeout: float) -> None:
        """Block (the GIL released) until a job finishes or `timeout` passes; at once when no job is in
        flight or a finished one awaits `take_finished`."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._job_waiters += 1
            try:
                while self._jobs and not self._done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cv.wait(remaining)
            finally:
                self._job_waiters -= 1

    def captured_graphs(self) -> int:
        """CUDA graphs the I/O threads have captured so far (0 on CPU, or with graphs off)."""
        with self._cv:
            return sum(len(slot.graphs) for state in self._states for slot in state.slots)

    def pending_jobs(self) -> int:
        with self._cv:
            return len(self._jobs)

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            self._work.notify_all()
        for w in self._workers:
            w.join(timeout=30)
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)

    # -- I/O threads --

    def _next_op(self, *, block: bool) -> FileOp | None:
        """The next operation, loads first.  With `block`, waits for one and returns None only when stopping;
        without, returns None at once if none is queued."""
        with self._lock:
            while block and not self._loads and not self._stores and not self._stopping:
                self._work.wait()
            if self._loads:
                return self._loads.popleft()
            if self._stores:
                op = self._stores.popleft()
                self._queued_store_bytes -= op.nbytes
                _SET_QUEUED_STORES(float(len(self._stores)))
                return op
            return None

    def _run(self) -> None:
        """One I/O thread: a two-deep pipeline over its two staging slots.

        The file read of the next load (or the file write of the previous store) runs while the GPU moves the
        other slot's bytes, so the thread's file I/O, the part that bounds throughput, rarely waits for a copy,
        a hash or a scatter.  One device buffer serves both slots; the stream orders its use, given one rule:
        a load's scatter is queued before the next operation's copies into device staging (a store's last use of
        device staging, its device-to-host copy, is queued before anything that follows it anyway)."""
        try:
            state = self._thread_state()
            with self._cv:
                self._states.append(state)
        except Exception:  # noqa: BLE001 - a thread that cannot set up must still answer its operations
            log.exception("kvfs: an I/O thread could not set up; the operations it takes fail (recomputed)")
            state = None
        with self._cv:
            self._set_up += 1
            self._cv.notify_all()  # warm_up_loads waits until every thread has set up (or failed to)
        in_flight: _Flight | None = None  # GPU phase queued; finished (read back, settled, written) next
        settling: _Flight | None = None  # a verified load whose scatter is queued; reported once it completes
        while True:
            op = self._next_op(block=in_flight is None and settling is None)
            if op is None:  # nothing new: complete what is under way, or stop
                if settling is not None:
                    self._guard(settling, self._report_settled)
                    settling = None
                elif in_flight is not None:
                    settling = self._guard(in_flight, self._finish)
                    in_flight = None
                else:
                    return
                continue
            if state is None:
                self._fail(op, RuntimeError("I/O thread without staging buffers"))
                continue
            slot = (
                state.slots[1]
                if in_flight is not None and in_flight.slot is state.slots[0]
                else state.slots[0]
            )
            flight = self._guard(_Flight(op, slot, state), self._begin)
            if settling is not None:  # its scatter ran while the file above was read
                self._guard(settling, self._report_settled)
                settling = None
            if in_flight is not None and not in_flight.op.is_load:
                # A store's device staging is free in stream order: queue the next GPU phase first, then write
                # the store's file while the GPU works.
                if flight is not None:
                    flight = self._guard(flight, self._launch)
                self._guard(in_flight, self._finish)
            else:
                if in_flight is not None:
                    settling = self._guard(in_flight, self._finish)
                if flight is not None:
                    flight = self._guard(flight, self._launch)
            in_flight = flight

    def _guard(self, flight: _Flight, step: Callable[[_Flight], _Flight | None]) -> _Flight | None:
        """Run one step of an operation; an exception fails that operation alone (reported, so vLLM recomputes
        or the block is simply not stored), never the thread or the engine."""
        try:
            return step(flight)
        except Exception as exc:  # noqa: BLE001 - one bad file must never kill an I/O thread or the engine
            self._fail(flight.op, exc)
            return None

    def _fail(self, op: FileOp, exc: BaseException) -> None:
        log.error("kvfs: %s of %s failed", "load" if op.is_load else "store", op.path, exc_info=exc)
        if op.is_load:
            self._count_miss(MissReason.IO_ERROR)
        else:
            metrics.STORES.labels("failed").inc()
        self._report(op, ok=False, nbytes=0)

    def _report(self, op: FileOp, *, ok: bool, nbytes: int, store_seconds: float | None = None) -> None:
        """Complete one operation; `store_seconds`, a store's service time, feeds the measured store bandwidth
        under the same lock."""
        with self._lock:
            if store_seconds is not None and op.nbytes:
                self._store_samples.append(store_seconds / op.nbytes)
                self._estimate_stale = True
            self._op_done_locked(op, ok=ok, nbytes=nbytes)

    def _thread_state(self) -> _ThreadState:
        """This thread's staging: two slots of pinned host memory (each with its block-id and digest buffers)
        and, on CUDA, one device buffer, a stream, and the device-hashing state."""
        if self.cuda:
            # The current CUDA device is per thread and starts at 0: a TP rank's I/O thread must name its GPU,
            # or Triton launches (which use the current device and its stream) would go to GPU 0.
            torch.cuda.set_device(self.device)
        max_blocks = self.max_file_bytes  # at least one byte a block: an upper bound on blocks a file holds
        slots = tuple(
            _Slot.allocate(
                self.max_file_bytes,
                min(max_blocks, _MAX_BLOCKS_PER_FILE),
                self.device,
                self.cuda,
                DeviceChecksums(self.device, self.max_file_bytes) if self.device_checksums else None,
                self.cuda_graphs,
            )
            for _ in range(_SLOTS)
        )
        dev = torch.empty(self.max_file_bytes, dtype=torch.uint8, device=self.device) if self.cuda else None
        stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        return _ThreadState(slots, dev, stream)

    # -- one operation's steps: _begin (CPU work before the GPU phase), _launch (queue the GPU phase),
    #    _finish (after the GPU phase: settle and scatter a load, write a store's file), _report_settled --

    def _begin(self, f: _Flight) -> _Flight | None:
        op = f.op
        n = op.nbytes
        if not op.is_load:
            # Admitted at submit on the backlog it joined; however long it then waits for the GPU or for the
            # loads served first, it is written (dropping it now would waste the wait and lose the chunk).
            if n <= self._inline_max:
                # Nothing to overlap on the CPU (hashing a payload this size is never handed to helpers): the
                # whole store now, its hash inside store_block, instead of three pipeline steps (the first of
                # them empty for a payload written in place with no compute event to wait for).
                if op.buffer is None or op.event is not None:
                    self._launch(f)
                return self._finish(f)
            return f
        # CPU pools hash large payloads after the read (on helpers, while the next file is read); small ones as
        # they are read, delivered at once.
        hashed_later = f.slot.hashes is not None or (not self.cuda and n > self._inline_max)
        reading = time.monotonic()
        result = load_block(op.path, op.ident, self._payload(f), direct=self.direct, verify=not hashed_later)
        _LOAD_READ_S(time.monotonic() - reading)
        if result.ok and result.nbytes != n:
            # A shorter payload is another block range or layout: never scatter a partial chunk.
            result = LoadResult(False, MissReason.TRUNCATED, result.nbytes)
        header = result.header
        if (
            result.ok
            and not result.verified
            and header is not None
            and header.checksum_algo != PIECES_ALGO_ID
        ):
            # A file from before algorithm 2: checked on the CPU.
            result = settle_load(result, payload_checksum(self._payload(f), header.checksum_algo))
        if not result.ok:
            self._report_miss(op, result)
            return None
        f.result = result
        if not self.cuda and result.verified:  # an old-format file, checked above: deliver it now
            self._deliver_cpu_load(f)
            return None
        return f

    def _launch(self, f: _Flight) -> _Flight | None:
        if not self.cuda and f.op.event is not None:
            # On CPU the op's event stands for the compute stream (the forward pass writing this KV): waiting
            # for it is prefill time, not storage time, so it is not part of the store's service time.
            f.op.event.synchronize()  # type: ignore[attr-defined]
        started = time.monotonic()
        try:
            return self._queue_gpu_phase(f)
        finally:
            f.busy_s += time.monotonic() - started

    def _queue_gpu_phase(self, f: _Flight) -> _Flight | None:
        op, slot, n = f.op, f.slot, f.op.nbytes
        if not self.cuda:
            # The payload's hash is computed now or by helpers; a store gathers first (unless in place).
            if not op.is_load and op.buffer is None:
                # Through the slot's (capture-less) graph cache only to learn whether this shape ran before.
                f.warm = slot.graphs.run(
                    ("store", id(op.copier), len(op.block_ids), n),
                    lambda: op.copier.gather(op.block_ids, slot.host[:n]),
                )
            if n > self._inline_max:  # smaller stores are hashed by store_block, as they are written
                f.digests = self._hash_async(self._payload(f))
            return f
        dev, host, stream = f.state.dev[:n], slot.host[:n], f.state.stream
        hashes = slot.hashes
        f.pieces = hashes.hasher.full_pieces(n) if hashes is not None else 0
        with torch.cuda.stream(stream):
            if op.is_load and f.result is not None and f.result.verified:  # hashed by the CPU as it was read
                _copy_and_scatter(slot, dev, host, op.copier, op.block_ids, op.file_blocks, op.first)
            elif op.is_load:
                _copy_and_hash(slot, dev, host)
            else:
                if op.event is not None:
                    stream.wait_event(op.event)
                k = slot.stage_ids(op.block_ids)

                def gather_hash_copy() -> None:
                    op.copier.gather(slot.ids_on_device(k), dev)
                    if hashes is not None:
                        hashes.launch(dev)
                    host.copy_(dev, non_blocking=True)

                f.warm = slot.graphs.run(
                    slot.shape("store", id(op.copier), k, n), gather_hash_copy, owner=op.copier
                )
            slot.ready.record(stream)
        return f

    def _finish(self, f: _Flight) -> _Flight | None:
        op, slot, n = f.op, f.slot, f.op.nbytes
        if slot.ready is not None:
            # For a store this wait includes the forward pass it waits behind (a long prefill): not storage time.
            waiting = time.monotonic()
            slot.ready.synchronize()
            (_LOAD_GPU_WAIT_S if op.is_load else _STORE_GPU_WAIT_S)(time.monotonic() - waiting)
        finishing = time.monotonic()
        if op.is_load:
            assert f.result is not None
            if f.result.verified:  # scattered already (CPU-hashed load)
                self._report_loaded(op)
                return None
            if not self.cuda:
                result = settle_load(f.result, self._helper_checksum(f))
                if result.ok:
                    self._deliver_cpu_load(f)
                else:
                    self._report_miss(op, result)
                return None
            result = settle_load(f.result, slot.hashes.checksum(f.pieces, slot.host_mv[:n]))  # type: ignore[union-attr]
            if not result.ok:
                self._report_miss(op, result)
                return None
            dev, stream = f.state.dev[:n], f.state.stream
            with torch.cuda.stream(stream):
                # Only verified bytes reach the KV cache; the copies of block ids and payload before it are done.
                _scatter(slot, dev, op.copier, op.block_ids, op.file_blocks, op.first)
                slot.done.record(stream)
            return f
        if slot.hashes is not None:
            checksum: int | None = slot.hashes.checksum(f.pieces, slot.host_mv[:n])
        else:
            # None: store_block hashes it
            checksum = self._helper_checksum(f) if f.digests else None
        writing = time.monotonic()
        result = store_block(
            op.path,
            self._payload(f),
            op.ident,
            durability=self.durability,
            file_mode=self.file_mode,
            direct=self.direct,
            checksum=checksum,
        )
        _STORE_WRITE_S(time.monotonic() - writing)
        # The thread's own time on this store (queueing its GPU phase, writing the file), not the wall time since
        # it was picked up: that spans the GPU's wait for the forward pass and, pipelined, the next file's read.
        # A store whose GPU phase ran its shape for the first time on this slot (Triton compiling the gather,
        # seconds on a fresh host; then the graph capture) is no sample: one such time seeded the estimate 100x
        # too slow, and the next prefill step's whole burst of stores was dropped (64 of 508 chunks at 128k).
        elapsed = f.busy_s + time.monotonic() - finishing if f.warm else None
        _STORES_BY_OUTCOME[result.outcome](1)
        ok, nbytes = True, 0
        if result.outcome == StoreOutcome.STORED:
            nbytes = n
            _STORE_BYTES(n)
            if self.journal is not None and op.block_key is not None:
                # The file's size, as a scan counts it: journal-fed and scanned rows must agree, or usage
                # changes by the header's share (6% of a 64 KiB block) when a scan follows ingest.
                self.journal.record_store(
                    op.block_key,
                    HEADER_SIZE + n,
                    chain_pos=op.chain_pos,
                    now=op.stamp,
                    parent=op.parent_hash,
                )
        elif result.outcome == StoreOutcome.EXISTS:
            if self.journal is not None and op.block_key is not None:
                self.journal.record_access(op.block_key, now=op.stamp, chain_pos=op.chain_pos)
        else:
            log.warning("kvfs: store of %s failed: %s", op.path, result.error)
            ok = False
        self._report(op, ok=ok, nbytes=nbytes, store_seconds=elapsed)
        return None

    @staticmethod
    def _payload(f: _Flight) -> memoryview:
        """Where the operation's file bytes are: the caller's own buffer, or the slot's host staging."""
        return f.op.buffer if f.op.buffer is not None else f.slot.host_mv[: f.op.nbytes]

    def _hash_async(self, payload: memoryview) -> list[Future[list[int]]]:
        """The payload's piece digests, on the helpers (now, without them: a pool whose one-step size a test
        lowered)."""
        if self._hasher is None:
            done: Future[list[int]] = Future()
            done.set_result(piece_digests(payload))
            return [done]
        return [
            self._hasher.submit(piece_digests, payload[i : i + _HASH_TASK_BYTES])
            for i in range(0, len(payload), _HASH_TASK_BYTES)
        ]

    @staticmethod
    def _helper_checksum(f: _Flight) -> int:
        return combine_piece_digests([d for task in f.digests for d in task.result()])

    def _deliver_cpu_load(self, f: _Flight) -> None:
        """A verified CPU load: scatter it from host staging (unless it was read in place) and report it."""
        op = f.op
        if op.buffer is None:
            op.copier.scatter(
                f.slot.host[: op.nbytes], op.block_ids, file_blocks=op.file_blocks, first=op.first
            )
        self._report_loaded(op)

    def _report_settled(self, f: _Flight) -> None:
        """A verified load is done once its scatter has completed: only then may vLLM use those blocks."""
        waiting = time.monotonic()
        f.slot.done.synchronize()
        _LOAD_GPU_WAIT_S(time.monotonic() - waiting)
        self._report_loaded(f.op)

    def _report_loaded(self, op: FileOp) -> None:
        _LOADS_OK(1)
        _LOAD_BYTES(op.nbytes)
        self._report(op, ok=True, nbytes=op.nbytes)

    def _report_miss(self, op: FileOp, result: LoadResult) -> None:
        reason = result.reason if result.reason is not None else MissReason.IO_ERROR
        self._count_miss(reason)
        log.info("kvfs: load of %s missed (%s); its tokens are recomputed", op.path, reason)
        self._report(op, ok=False, nbytes=0)

    @staticmethod
    def _count_miss(reason: MissReason) -> None:
        metrics.LOADS.labels("missed").inc()
        metrics.LOAD_MISSES.labels(str(reason)).inc()


class DropReason(StrEnum):
    """Why a store was dropped (label of `kvfs_connector_stores_dropped_total`)."""

    # The bytes queued ahead, at the measured store bandwidth, would take longer than kvfs_store_budget.
    BACKLOG = "backlog"


class _RateLimitedLog:
    """Logs a recurring event at most once per `interval_s`, with the count since the last line, so a storage
    slowdown that drops thousands of stores writes one warning a minute."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -float("inf")
        self._count = 0

    def event(self, fmt: str, *args: object) -> bool:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        log.warning(fmt, self._count, *args)
        self._last, self._count = now, 0
        return True


# Pre-bound increments for the per-file path (a label look-up costs more than the count, and prometheus_client's
# own `inc` three Python calls: metrics.hot_inc).
_LOAD_READ_S = metrics.hot_inc(metrics.IO_SECONDS.labels("load", "read"))
_LOAD_GPU_WAIT_S = metrics.hot_inc(metrics.IO_SECONDS.labels("load", "gpu_wait"))
_STORE_WRITE_S = metrics.hot_inc(metrics.IO_SECONDS.labels("store", "write"))
_STORE_GPU_WAIT_S = metrics.hot_inc(metrics.IO_SECONDS.labels("store", "gpu_wait"))
_STORES_BY_OUTCOME = {
    outcome: metrics.hot_inc(metrics.STORES.labels(str(outcome))) for outcome in StoreOutcome
}
_STORE_BYTES = metrics.hot_inc(metrics.STORE_BYTES)
_LOADS_OK = metrics.hot_inc(metrics.LOADS.labels("ok"))
_LOAD_BYTES = metrics.hot_inc(metrics.LOAD_BYTES)
_SET_QUEUED_STORES = metrics.hot_set(metrics.QUEUED_STORES)
_LOAD_JOB_S = metrics.JOB_SECONDS.labels("load")
_STORE_JOB_S = metrics.JOB_SECONDS.labels("store")

# Staging slots per I/O thread: one file's bytes move on the GPU while the other slot's file is read or written.
_SLOTS = 2
# Store samples behind the bandwidth estimate: their median ignores a stall of every thread at once (one slow
# sample each) in pools of up to 31 threads, and follows storage that really slows down within 32 stores.
_STORE_SAMPLES = 64
# A helper hashing task: whole hash pieces (the helpers' digests are the payload's), several per task so that a
# large file costs few hand-offs.  Smaller payloads are hashed by their I/O thread: a hand-off (a few context
# switches) would cost more than it overlaps.
_HASH_TASK_BYTES = 4 * HASH_PIECE_BYTES
_HELPER_MIN_BYTES = 8 * HASH_PIECE_BYTES
# Block-id buffers hold at most this many ids; a file of more blocks (not a layout vLLM produces) falls back to
# a copy of its ids made at launch.
_MAX_BLOCKS_PER_FILE = 4096


# A load's GPU phases, by graph shape: the I/O threads and `IoPool.warm_up_loads` queue them through these, so
# a warmed-up shape is exactly the one a load replays.


def _copy_and_hash(slot: _Slot, dev: torch.Tensor, host: torch.Tensor) -> None:
    """Device-hashed load: the staged file to the device and its hash, before anything reaches the KV cache."""
    hashes = slot.hashes
    assert hashes is not None

    def enqueue() -> None:
        dev.copy_(host, non_blocking=True)
        hashes.launch(dev)

    slot.graphs.run(("load", host.numel()), enqueue)


def _scatter(
    slot: _Slot,
    dev: torch.Tensor,
    copier: GroupCopier,
    block_ids: Sequence[int],
    file_blocks: int,
    first: int,
) -> None:
    """Device-hashed load, once verified: the payload from device staging into the KV cache's blocks."""
    k = slot.stage_ids(block_ids)
    slot.graphs.run(
        slot.shape("scatter", id(copier), k, file_blocks, first, dev.numel()),
        lambda: copier.scatter(dev, slot.ids_on_device(k), file_blocks=file_blocks, first=first),
        owner=copier,
    )


def _copy_and_scatter(
    slot: _Slot,
    dev: torch.Tensor,
    host: torch.Tensor,
    copier: GroupCopier,
    block_ids: Sequence[int],
    file_blocks: int,
    first: int,
) -> None:
    """CPU-hashed load (verified as it was read): to the device and into the KV cache's blocks in one phase."""
    k = slot.stage_ids(block_ids)

    def enqueue() -> None:
        dev.copy_(host, non_blocking=True)
        copier.scatter(dev, slot.ids_on_device(k), file_blocks=file_blocks, first=first)

    slot.graphs.run(
        slot.shape("load+scatter", id(copier), k, file_blocks, first, host.numel()), enqueue, owner=copier
    )


@dataclass
class _Slot:
    """One staging slot: pinned host bytes for a file, its block ids (pinned, and on the device), the device
    digests of its payload, and the events that say when the GPU is done with it."""

    host: torch.Tensor
    host_mv: memoryview
    ids_host: torch.Tensor
    ids_dev: torch.Tensor | None
    hashes: DeviceChecksums | None
    ready: torch.cuda.Event | None  # the slot's GPU phase (copies and hash) has completed
    done: torch.cuda.Event | None  # a load's scatter has completed
    graphs: GraphCache
    _oversized: torch.Tensor | None = None

    @classmethod
    def allocate(
        cls,
        nbytes: int,
        max_blocks: int,
        device: torch.device,
        cuda: bool,
        hashes: DeviceChecksums | None,
        graphs: bool,
    ) -> _Slot:
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda)
        ids_host = torch.empty(max_blocks, dtype=torch.int64, pin_memory=cuda)
        # Blocking events: waiting on one sleeps in the driver instead of spinning.  stream.synchronize() spins,
        # and 16 I/O threads spinning through every DMA take the cores that the other threads' file I/O needs.
        return cls(
            host=host,
            host_mv=memoryview(host.numpy()),
            ids_host=ids_host,
            ids_dev=torch.empty(max_blocks, dtype=torch.int64, device=device) if cuda else None,
            hashes=hashes,
            ready=torch.cuda.Event(blocking=True) if cuda else None,
            done=torch.cuda.Event(blocking=True) if cuda else None,
            graphs=GraphCache(enabled=cuda and graphs),
        )

    def stage_ids(self, block_ids: Sequence[int]) -> int:
        """Put `block_ids` in this slot's pinned id buffer (read by the next `ids_on_device` copy when it runs);
        their count.  Ids that do not fit are kept aside and copied the slow way."""
        n = len(block_ids)
        if n <= len(self.ids_host):
            self.ids_host.numpy()[:n] = block_ids
            self._oversized = None
        else:
            self._oversized = torch.as_tensor(list(block_ids), dtype=torch.int64)
        return n

    def shape(self, *key: object) -> tuple[object, ...] | None:
        """A graph key for a phase that uses the staged ids, or None (run eagerly) when they did not fit."""
        return key if self._oversized is None else None

    def ids_on_device(self, n: int) -> torch.Tensor:
        """On the current stream: the staged block ids copied to the device, from pinned memory so the copy is
        asynchronous (a pageable copy would wait for the whole stream) and can be part of a CUDA graph."""
        if self._oversized is not None:
            return self._oversized.to(self.ids_dev.device if self.ids_dev is not None else "cpu")
        assert self.ids_dev is not None
        ids = self.ids_dev[:n]
        ids.copy_(self.ids_host[:n], non_blocking=True)
        return ids


@dataclass
class _ThreadState:
    slots: tuple[_Slot, ...]
    dev: torch.Tensor | None  # device staging, shared by the slots in stream order
    stream: torch.cuda.Stream | None


@dataclass
class _Flight:
    """One operation on its way through a thread's pipeline."""

    op: FileOp
    slot: _Slot
    state: _ThreadState
    result: LoadResult | None = None  # a load's read, before the payload is verified
    pieces: int = 0  # whole hash pieces whose digests the GPU computes
    busy_s: float = 0.0  # thread time spent queueing its GPU phase (a store's service time, with its write)
    warm: bool = (
        True  # a store's GPU phase ran a shape seen before (no compile, no capture): a bandwidth sample
    )
    digests: list[Future[list[int]]] = field(default_factory=list)  # CPU pools: the payload's hashing


class DeviceChecksums:
    """One I/O thread's GPU checksum state: the hasher and its digest buffers (device and pinned host).
    Public for `tools.datapath.ladder`, which times the same steps outside the pool."""

    def __init__(self, device: torch.device, max_file_bytes: int) -> None:
        self.hasher = devhash.DeviceHasher(device)
        slots = max_file_bytes // HASH_PIECE_BYTES + 1
        self.dev_digests = torch.empty(slots, dtype=torch.int64, device=device)
        self.host_digests = torch.empty(slots, dtype=torch.int64, pin_memory=True)
        # The digests as the little-endian uint64 bytes that algorithm 2 hashes (int64 bits are the same).
        self.host_digest_bytes = memoryview(self.host_digests.numpy()).cast("B")

    def launch(self, payload: torch.Tensor) -> int:
        """On the current stream: hash the whole pieces of `payload` and copy their digests to the host."""
        pieces = self.hasher.digests(payload, self.dev_digests)
        if pieces:
            self.host_digests[:pieces].copy_(self.dev_digests[:pieces], non_blocking=True)
        return pieces

    def checksum(self, pieces: int, host_payload: memoryview) -> int:
        """After the stream synchronized: the payload's checksum (a partial last piece hashed on the host)."""
        packed = self.host_digest_bytes[: pieces * 8]
        tail = host_payload[pieces * HASH_PIECE_BYTES :]
        if len(tail):
            return combine_packed_digests(bytes(packed) + struct.pack("<Q", checksum64(tail)))
        return combine_packed_digests(packed)
