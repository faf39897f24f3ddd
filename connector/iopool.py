"""The worker's I/O engine: a pool of threads, each with its own pinned staging buffer (and, on CUDA, its own
device staging buffer and stream), moving whole chunks between the KV cache and block files.

On CUDA the payload checksums (algorithm 2 of `kvfs.checksum`) are computed by the GPU from device staging
(`connector.devhash`): a store writes its file without the CPU reading the payload, and a load copies the file's
bytes to the GPU, hashes them there and scatters them into the KV cache only once they match the
header.  Without Triton, or with `device_checksums=False`, the CPU hashes as it reads and writes.

Loads take priority over stores.  A store waits behind the compute stream through a CUDA event recorded at
submit time.  Stores queue under a time budget: a store that would wait (or has waited) longer than the budget
is dropped, counted, and reported as not stored.  Failed loads are reported with the GPU blocks they should
have filled, so the connector can have vLLM recompute exactly those tokens.  No vLLM import: the GPU check and
the benchmark use this module on machines without vLLM.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from connector import devhash, metrics
from connector.copier import GroupCopier
from kvfs.blockfile import (
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
    combine_piece_digests,
    payload_checksum,
)
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.journal import JournalWriter

log = logging.getLogger("kvfs.connector")


@dataclass
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
    event: object | None = None  # torch.cuda.Event recorded on the compute stream (stores)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.copier.payload_bytes(self.file_blocks)


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
    ) -> None:
        self.cuda = device.type == "cuda"
        if (
            self.cuda and device.index is None
        ):  # "cuda" means the caller's current GPU; threads need its index
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.device_checksums = bool(self.cuda and device_checksums and devhash.HAS_TRITON)
        if self.device_checksums:
            problem = devhash.self_test(device)
            if problem is not None:
                log.warning(
                    "kvfs: GPU payload hashing failed its self-test (%s); hashing on the CPU", problem
                )
                metrics.DEVICE_HASH_DISABLED.inc()
                self.device_checksums = False
        per_thread = max_file_bytes * (2 if self.cuda else 1)
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

        self._cv = threading.Condition()
        self._loads: deque[FileOp] = deque()
        self._stores: deque[FileOp] = deque()
        self._jobs: dict[int, _Job] = {}
        self._done: list[JobDone] = []
        self._store_ema_s = 0.0  # per-file store time, for the drop-at-submit estimate
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._run, name=f"kvfs-io-{i}", daemon=True) for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()

    # -- submission (called from the worker's main thread; never blocks on I/O) --

    def submit(self, job_id: int, ops: Sequence[FileOp], *, is_load: bool) -> None:
        now = time.monotonic()
        with self._cv:
            job = _Job(is_load=is_load, remaining=len(ops), started=now)
            self._jobs[job_id] = job
            if not ops:
                self._finish_locked(job_id, job)
                return
            dropped: list[FileOp] = []
            for op in ops:
                if is_load:
                    self._loads.append(op)
                elif self._store_wait_estimate_locked() > self.store_budget_s:
                    dropped.append(op)
                else:
                    self._stores.append(op)
            metrics.QUEUED_STORES.set(len(self._stores))
            for op in dropped:
                metrics.STORES.labels("dropped").inc()
                self._op_done_locked(op, ok=False, nbytes=0)
            self._cv.notify_all()

    def _store_wait_estimate_locked(self) -> float:
        return (len(self._stores) + 1) / self.threads * self._store_ema_s

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
        self._done.append(
            JobDone(
                job_id=job_id,
                is_load=job.is_load,
                success=job.failed == 0,
                nbytes=job.nbytes,
                seconds=time.monotonic() - job.started,
                failed_block_ids=job.failed_block_ids,
                files_ok=job.ok,
                files_failed=job.failed,
            )
        )
        self._cv.notify_all()

    def take_finished(self) -> list[JobDone]:
        with self._cv:
            done, self._done = self._done, []
        return done

    def wait(self, job_ids: Iterable[int], timeout: float | None = None) -> bool:
        """Block until none of `job_ids` is in flight (their results stay queued for take_finished)."""
        ids = set(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while ids & self._jobs.keys():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def pending_jobs(self) -> int:
        with self._cv:
            return len(self._jobs)

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for w in self._workers:
            w.join(timeout=30)

    # -- I/O threads --

    def _next_op(self) -> FileOp | None:
        with self._cv:
            while not self._loads and not self._stores and not self._stopping:
                self._cv.wait()
            if self._loads:
                return self._loads.popleft()
            if self._stores:
                op = self._stores.popleft()
                metrics.QUEUED_STORES.set(len(self._stores))
                return op
            return None

    def _run(self) -> None:
        try:
            state = self._thread_state()
        except Exception:  # noqa: BLE001 - a thread that cannot set up must still answer its operations
            log.exception("kvfs: an I/O thread could not set up; the operations it takes fail (recomputed)")
            state = None
        while True:
            op = self._next_op()
            if op is None:
                return
            try:
                if state is None:
                    raise RuntimeError("I/O thread without staging buffers")
                if op.is_load:
                    ok, nbytes = self._load(op, *state)
                else:
                    ok, nbytes = self._store(op, *state)
            except Exception:  # noqa: BLE001 - one bad file must never kill an I/O thread or the engine
                log.exception("kvfs: %s of %s failed", "load" if op.is_load else "store", op.path)
                if op.is_load:
                    metrics.LOADS.labels("missed").inc()
                    metrics.LOAD_MISSES.labels("io_error").inc()
                else:
                    metrics.STORES.labels("failed").inc()
                ok, nbytes = False, 0
            with self._cv:
                self._op_done_locked(op, ok=ok, nbytes=nbytes)

    def _thread_state(self) -> tuple:  # type: ignore[type-arg]
        """This thread's staging: pinned host buffer (+ its memoryview), and on CUDA a device buffer, a stream,
        a completion event and the device-hashing state."""
        if self.cuda:
            # The current CUDA device is per thread and starts at 0: a TP rank's I/O thread must name its GPU,
            # or Triton launches (which use the current device and its stream) would go to GPU 0.
            torch.cuda.set_device(self.device)
        host = torch.empty(self.max_file_bytes, dtype=torch.uint8, pin_memory=self.cuda)
        host_mv = memoryview(host.numpy())
        dev = torch.empty(self.max_file_bytes, dtype=torch.uint8, device=self.device) if self.cuda else None
        stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        # A blocking event: waiting on it sleeps in the driver instead of spinning.  stream.synchronize() spins,
        # and 16 I/O threads spinning through every DMA take the cores that the other threads' file I/O needs.
        done = torch.cuda.Event(blocking=True) if self.cuda else None
        ctx = DeviceChecksums(self.device, self.max_file_bytes) if self.device_checksums else None
        return host, host_mv, dev, stream, done, ctx

    def _store(self, op, host, host_mv, dev, stream, done, ctx) -> tuple[bool, int]:  # type: ignore[no-untyped-def]
        if self.store_budget_s and time.monotonic() - op.enqueued > self.store_budget_s:
            metrics.STORES.labels("dropped").inc()
            return False, 0
        started = time.monotonic()
        n = op.nbytes
        checksum = None
        if self.cuda:
            with torch.cuda.stream(stream):
                if op.event is not None:
                    stream.wait_event(op.event)
                op.copier.gather(op.block_ids, dev[:n])
                pieces = ctx.launch(dev[:n]) if ctx is not None else 0
                host[:n].copy_(dev[:n], non_blocking=True)
                done.record(stream)
            done.synchronize()
            if ctx is not None:
                checksum = ctx.checksum(pieces, host_mv[:n])
        else:
            op.copier.gather(op.block_ids, host[:n])
        result = store_block(
            op.path,
            host_mv[:n],
            op.ident,
            durability=self.durability,
            file_mode=self.file_mode,
            direct=self.direct,
            checksum=checksum,
        )
        elapsed = time.monotonic() - started
        with self._cv:
            self._store_ema_s = elapsed if self._store_ema_s == 0 else 0.9 * self._store_ema_s + 0.1 * elapsed
        metrics.STORES.labels(str(result.outcome)).inc()
        if result.outcome == StoreOutcome.STORED:
            metrics.STORE_BYTES.inc(n)
            if self.journal is not None and op.block_key is not None:
                self.journal.record_store(op.block_key, n, chain_pos=op.chain_pos)
            return True, n
        if result.outcome == StoreOutcome.EXISTS:
            if self.journal is not None and op.block_key is not None:
                self.journal.record_access(op.block_key)
            return True, 0
        log.warning("kvfs: store of %s failed: %s", op.path, result.error)
        return False, 0

    def _load(self, op, host, host_mv, dev, stream, done, ctx) -> tuple[bool, int]:  # type: ignore[no-untyped-def]
        n = op.nbytes
        if ctx is not None:
            result = self._load_checked_on_device(op, host, host_mv, dev, stream, done, ctx)
        else:
            result = load_block(op.path, op.ident, host_mv[:n], direct=self.direct)
        if result.ok and result.nbytes != n:
            # A shorter payload is another block range or layout: never scatter a partial chunk.
            result = LoadResult(False, MissReason.TRUNCATED, result.nbytes)
        if not result.ok:
            reason = str(result.reason) if result.reason is not None else "io_error"
            metrics.LOADS.labels("missed").inc()
            metrics.LOAD_MISSES.labels(reason).inc()
            log.info("kvfs: load of %s missed (%s); its tokens are recomputed", op.path, reason)
            return False, 0
        if self.cuda:
            with torch.cuda.stream(stream):
                if ctx is None:
                    dev[:n].copy_(host[:n], non_blocking=True)
                op.copier.scatter(dev[:n], op.block_ids, file_blocks=op.file_blocks, first=op.first)
                done.record(stream)
            done.synchronize()
        else:
            op.copier.scatter(host[:n], op.block_ids, file_blocks=op.file_blocks, first=op.first)
        metrics.LOADS.labels("ok").inc()
        metrics.LOAD_BYTES.inc(n)
        return True, n

    def _load_checked_on_device(self, op, host, host_mv, dev, stream, done, ctx) -> LoadResult:  # type: ignore[no-untyped-def]
        """Read the file into pinned staging in one system call, copy it to device staging, hash it there and
        settle the load against the header.  Device staging holds a verified payload only if this is ok."""
        n = op.nbytes
        result = load_block(op.path, op.ident, host_mv[:n], direct=self.direct, verify=False)
        if not result.ok or result.header is None:
            return result
        if result.nbytes != n:
            return LoadResult(False, MissReason.TRUNCATED, result.nbytes)
        algo = result.header.checksum_algo
        with torch.cuda.stream(stream):
            dev[:n].copy_(host[:n], non_blocking=True)
            pieces = ctx.launch(dev[:n]) if algo == PIECES_ALGO_ID else 0
            done.record(stream)
        done.synchronize()
        if algo == PIECES_ALGO_ID:
            return settle_load(result, ctx.checksum(pieces, host_mv[:n]))
        return settle_load(result, payload_checksum(host_mv[:n], algo))  # files from before algorithm 2


class DeviceChecksums:
    """One I/O thread's GPU checksum state: the hasher and its digest buffers (device and pinned host).
    Public for `connector.ladder`, which times the same steps outside the pool."""

    def __init__(self, device: torch.device, max_file_bytes: int) -> None:
        self.hasher = devhash.DeviceHasher(device)
        slots = max_file_bytes // HASH_PIECE_BYTES + 1
        self.dev_digests = torch.empty(slots, dtype=torch.int64, device=device)
        self.host_digests = torch.empty(slots, dtype=torch.int64, pin_memory=True)

    def launch(self, payload: torch.Tensor) -> int:
        """On the current stream: hash the whole pieces of `payload` and copy their digests to the host."""
        pieces = self.hasher.digests(payload, self.dev_digests)
        if pieces:
            self.host_digests[:pieces].copy_(self.dev_digests[:pieces], non_blocking=True)
        return pieces

    def checksum(self, pieces: int, host_payload: memoryview) -> int:
        """After the stream synchronized: the payload's checksum (a partial last piece hashed on the host)."""
        digests = devhash.as_unsigned(self.host_digests[:pieces].tolist())
        tail = host_payload[pieces * HASH_PIECE_BYTES :]
        if len(tail):
            digests.append(checksum64(tail))
        return combine_piece_digests(digests)
