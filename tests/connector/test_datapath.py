"""The connector's data path on CPU tensors with real block files: gather -> file -> scatter, partial chunks,
two groups, the store time budget, and every way a file can go bad between lookup and load."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import pytest
import torch

from connector import iopool, metrics
from connector.copier import GroupCopier
from connector.iopool import FileOp, IoPool
from connector.naming import file_identity_key
from kvfs.blockfile import HEADER_SIZE, BlockIdentity, store_block

FP = bytes(range(32))
BPC = 4  # GPU blocks per file


class HeldGather(GroupCopier):
    """A copier whose gathers wait for `release`: holds a store in its GPU phase while a test queues more."""

    gathering: threading.Event
    release: threading.Event

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gathering, self.release = threading.Event(), threading.Event()

    def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.gathering.set()
        assert self.release.wait(10)
        super().gather(*args, **kwargs)


class NappingGather(GroupCopier):
    """A copier whose gathers give up the GIL for `nap_s` first (0: not at all): a store's own hand-off of the GIL
    inside its measured time, long enough for another thread to take it."""

    nap_s: float = 0.0

    def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.nap_s:
            time.sleep(self.nap_s)
        super().gather(*args, **kwargs)


def warm_up(pool: IoPool, tmp_path, copier: GroupCopier, chunks: list[list[int]], job: int) -> None:
    """Stores enough files of `copier` that, besides each slot's first run of its shape (a one-time cost, no
    sample), two per thread are samples: the pool has then measured its store bandwidth."""
    assert len(chunks) >= pool.threads * (iopool._SLOTS + 2)
    ops = [
        op(tmp_path, copier, ids, load=False, key=bytes([97 + i % 26, 48 + i // 26]) * 18, job=job)
        for i, ids in enumerate(chunks)
    ]
    pool.submit(job, ops, is_load=False)
    assert pool.wait([job], timeout=30)
    assert all(d.success for d in pool.take_finished() if d.job_id == job)
    assert pool.store_bandwidth() > 0


def make_layers(num_layers: int, num_blocks: int, page: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Padded rows (page + 16) like vLLM's padded pages: only `page` bytes are payload.
    return [
        torch.randint(-128, 127, (num_blocks, page + 16), generator=g, dtype=torch.int8)
        for _ in range(num_layers)
    ]


@pytest.fixture(params=["one-step", "pipelined"])
def pool(request):
    # A CPU pool moves a payload in one step unless helpers hash it (a large payload with cores to spare), then
    # through the pipeline: every test of this fixture runs both.
    p = IoPool(threads=3, max_file_bytes=BPC * 3 * 256, device=torch.device("cpu"), store_budget_s=30.0)
    if request.param == "pipelined":
        p._inline_max = -1  # before any file is submitted
    yield p
    p.shutdown()


def op(
    tmp_path, copier, ids, *, load, key=b"k" * 36, first=0, file_blocks=BPC, job=1, fp=FP, ident_range=None
):
    rng = ident_range or ((0, file_blocks) if load else (first, len(ids)))
    return FileOp(
        job_id=job,
        is_load=load,
        path=str(tmp_path / "ns_0123456789ab" / "abc" / "de_g0" / (key.hex()[:40] + ".kvfs")),
        ident=BlockIdentity(fp, file_identity_key(key, *rng)),
        copier=copier,
        block_ids=ids,
        first=first if load else 0,
        file_blocks=file_blocks,
    )


def run(pool: IoPool, job: int, ops: list[FileOp], *, load: bool):
    pool.submit(job, ops, is_load=load)
    assert pool.wait([job], timeout=30)
    (done,) = [d for d in pool.take_finished() if d.job_id == job]
    return done


def pages(layers, ids, page):
    return [t[ids, :page].clone() for t in layers]


def test_round_trip_bit_exact_and_padding_untouched(tmp_path, pool):
    page = 64
    src = make_layers(3, 32, page, seed=1)
    dst = make_layers(3, 32, page, seed=2)
    dst_before = [t.clone() for t in dst]
    store_ids, load_ids = [5, 17, 2, 30], [0, 1, 2, 3]
    done = run(pool, 1, [op(tmp_path, GroupCopier(src, [page] * 3), store_ids, load=False)], load=False)
    assert done.success and done.nbytes == BPC * 3 * page
    done = run(pool, 2, [op(tmp_path, GroupCopier(dst, [page] * 3), load_ids, load=True, job=2)], load=True)
    assert done.success and not done.failed_block_ids
    for s, d in zip(pages(src, store_ids, page), pages(dst, load_ids, page), strict=True):
        assert torch.equal(s, d)
    for d, before in zip(dst, dst_before, strict=True):
        assert torch.equal(d[:, page:], before[:, page:])  # padding beyond the page is never written
        assert torch.equal(d[4:], before[4:])  # other blocks untouched


def test_partial_load_inside_a_chunk(tmp_path, pool):
    page = 32
    src, dst = make_layers(2, 16, page, 3), make_layers(2, 16, page, 4)
    run(pool, 1, [op(tmp_path, GroupCopier(src, [page] * 2), [8, 9, 10, 11], load=False)], load=False)
    # Load blocks 1..3 of the file (a request whose first GPU block is not chunk-aligned).
    done = run(
        pool, 2, [op(tmp_path, GroupCopier(dst, [page] * 2), [0, 1, 2], load=True, first=1, job=2)], load=True
    )
    assert done.success
    for s, d in zip(pages(src, [9, 10, 11], page), pages(dst, [0, 1, 2], page), strict=True):
        assert torch.equal(s, d)


def test_two_groups_with_different_page_sizes(tmp_path, pool):
    g0 = make_layers(2, 8, 64, 5)
    g1 = make_layers(3, 8, 32, 6)
    c0, c1 = GroupCopier(g0, [64, 64]), GroupCopier(g1, [32, 32, 32])
    ops = [
        op(tmp_path, c0, [0, 1, 2, 3], load=False, key=b"a" * 36),
        op(tmp_path, c1, [4, 5, 6, 7], load=False, key=b"b" * 36),
    ]
    assert run(pool, 1, ops, load=False).success
    d0, d1 = make_layers(2, 8, 64, 7), make_layers(3, 8, 32, 8)
    ops = [
        op(tmp_path, GroupCopier(d0, [64, 64]), [7, 6, 5, 4], load=True, key=b"a" * 36, job=2),
        op(tmp_path, GroupCopier(d1, [32] * 3), [3, 2, 1, 0], load=True, key=b"b" * 36, job=2),
    ]
    assert run(pool, 2, ops, load=True).success
    for s, d in zip(pages(g0, [0, 1, 2, 3], 64), pages(d0, [7, 6, 5, 4], 64), strict=True):
        assert torch.equal(s, d)
    for s, d in zip(pages(g1, [4, 5, 6, 7], 32), pages(d1, [3, 2, 1, 0], 32), strict=True):
        assert torch.equal(s, d)


def _corrupt(path: str, how: str) -> None:
    if how == "deleted":
        os.unlink(path)
    elif how == "truncated":
        os.truncate(path, os.path.getsize(path) - 100)
    elif how == "bitflip":
        with open(path, "r+b") as fh:
            fh.seek(HEADER_SIZE + 77)
            byte = fh.read(1)
            fh.seek(HEADER_SIZE + 77)
            fh.write(bytes([byte[0] ^ 0x10]))
    elif how == "foreign":
        # Same path, a file written for another model/layout (another fingerprint), same size.
        size = os.path.getsize(path) - HEADER_SIZE
        os.unlink(path)
        assert store_block(path, b"\x01" * size, BlockIdentity(b"\xff" * 32, b"k" * 36)).outcome == "stored"
    elif how == "other_range":
        # A file of the same key holding a different block range (a partial chunk).
        os.unlink(path)
        assert store_block(
            path, b"\x01" * 64 * 2, BlockIdentity(FP, file_identity_key(b"k" * 36, 2, 1))
        ).outcome


@pytest.mark.parametrize("how", ["deleted", "truncated", "bitflip", "foreign", "other_range"])
def test_bad_file_between_lookup_and_load_is_a_reported_miss(tmp_path, pool, how):
    page = 64
    src, dst = make_layers(2, 8, page, 9), make_layers(2, 8, page, 10)
    dst_before = [t.clone() for t in dst]
    store = op(tmp_path, GroupCopier(src, [page] * 2), [0, 1, 2, 3], load=False)
    assert run(pool, 1, [store], load=False).success
    _corrupt(store.path, how)
    misses_before = sum(
        s.value for m in metrics.LOAD_MISSES.collect() for s in m.samples if s.name.endswith("_total")
    )
    done = run(
        pool, 2, [op(tmp_path, GroupCopier(dst, [page] * 2), [4, 5, 6, 7], load=True, job=2)], load=True
    )
    assert not done.success
    assert sorted(done.failed_block_ids) == [4, 5, 6, 7]
    for d, before in zip(dst, dst_before, strict=True):
        assert torch.equal(d, before)  # nothing half-written into the KV cache
    misses_after = sum(
        s.value for m in metrics.LOAD_MISSES.collect() for s in m.samples if s.name.endswith("_total")
    )
    assert misses_after == misses_before + 1


def test_one_bad_file_fails_only_its_blocks(tmp_path, pool):
    page = 32
    src, dst = make_layers(1, 8, page, 11), make_layers(1, 8, page, 12)
    c = GroupCopier(src, [page])
    ops = [
        op(tmp_path, c, [0, 1, 2, 3], load=False, key=b"a" * 36),
        op(tmp_path, c, [4, 5, 6, 7], load=False, key=b"b" * 36),
    ]
    assert run(pool, 1, ops, load=False).success
    os.unlink(ops[1].path)
    d = GroupCopier(dst, [page])
    loads = [
        op(tmp_path, d, [0, 1, 2, 3], load=True, key=b"a" * 36, job=2),
        op(tmp_path, d, [4, 5, 6, 7], load=True, key=b"b" * 36, job=2),
    ]
    done = run(pool, 2, loads, load=True)
    assert not done.success and sorted(done.failed_block_ids) == [4, 5, 6, 7]
    assert done.files_ok == 1 and torch.equal(dst[0][:4, :page], src[0][:4, :page])


def test_existing_file_is_not_rewritten(tmp_path, pool):
    page = 32
    src = make_layers(1, 8, page, 13)
    c = GroupCopier(src, [page])
    first = op(tmp_path, c, [0, 1, 2, 3], load=False)
    assert run(pool, 1, [first], load=False).success
    mtime = os.stat(first.path).st_mtime_ns
    done = run(pool, 2, [op(tmp_path, c, [4, 5, 6, 7], load=False, job=2)], load=False)
    assert done.success and done.nbytes == 0  # EXISTS: nothing written
    assert os.stat(first.path).st_mtime_ns == mtime


class Prefill:
    """A long forward pass still writing the KV that stores gather: `synchronize()` (what the pool waits on for a
    store's compute event) and gathers from a `PrefillGather` return only once it is `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def synchronize(self) -> None:
        assert self.done.wait(30)


class PrefillGather(GroupCopier):
    """Gathers that wait for the prefill writing their KV, as the GPU's gather waits in stream order."""

    prefill: Prefill

    def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert self.prefill.done.wait(30)
        super().gather(*args, **kwargs)


def test_long_busy_prefill_drops_no_store(tmp_path):
    """Chunks stored during a prefill that keeps the GPU busy for many times the store budget all land: the
    time a store waits for the forward pass is neither backlog nor storage time.  (Before: stores queued behind
    the prefill for longer than the budget were dropped when picked up, and the wait inflated the store-time
    estimate, so later chunks were dropped at submit: 64k-128k prompts were barely stored.)"""
    page, budget = 32, 0.3
    pool = IoPool(threads=2, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=budget)
    try:
        src = make_layers(1, 64 * BPC, page, 14)
        dst = make_layers(1, 64 * BPC, page, 15)
        # storage is fast, and the pool has measured it
        warm_up(
            pool,
            tmp_path,
            GroupCopier(src, [page]),
            [list(range(i * BPC, (i + 1) * BPC)) for i in range(41, 52)],
            1,
        )
        prefill = Prefill()
        copier = PrefillGather(src, [page])
        copier.prefill = prefill
        dropped = metrics.STORES.labels("dropped")._value.get()
        keys = [bytes([65 + i // 26, 65 + i % 26]) * 18 for i in range(40)]
        chunks = [list(range(i * BPC, (i + 1) * BPC)) for i in range(1, 41)]
        for job, part in enumerate((range(0, 20), range(20, 40)), start=2):  # two scheduler steps' chunks
            ops = [op(tmp_path, copier, chunks[i], load=False, key=keys[i], job=job) for i in part]
            for o in ops:
                o.event = prefill
            pool.submit(job, ops, is_load=False)
            time.sleep(budget)
        time.sleep(3 * budget)  # the forward pass runs on, 5 budgets in all
        prefill.done.set()
        assert pool.wait([2, 3], timeout=30)
        done = {d.job_id: d for d in pool.take_finished()}
        assert done[2].success and done[3].success, done
        assert done[2].files_ok + done[3].files_ok == 40
        assert metrics.STORES.labels("dropped")._value.get() == dropped
        # and every chunk loads back bit-exact
        loads = [
            op(tmp_path, GroupCopier(dst, [page]), chunks[i], load=True, key=keys[i], job=4)
            for i in range(40)
        ]
        assert run(pool, 4, loads, load=True).success
        assert torch.equal(dst[0][BPC : 41 * BPC, :page], src[0][BPC : 41 * BPC, :page])
    finally:
        pool.shutdown()


def test_a_stall_of_every_io_thread_is_not_taken_for_slow_storage(tmp_path):
    """Something else holding the GIL for a while (a fresh engine's Triton compiles) stalls every I/O thread at
    once, and the stores in flight then take that long.  The drop-at-submit estimate must not take that for the
    storage's speed: the next burst of stores, well inside the budget at the storage's real speed, is written
    whole.  (Before: an average seeded and moved by such samples dropped 64 of 508 chunks of a 128k prompt on
    disk; here, most of the burst.)  The stall is real: this thread spins in Python with a long switch
    interval, so each I/O thread waits for the GIL after it gives it up (here, a short nap in the gather: a store's
    few fast system calls are often over before a waiting thread wakes)."""
    page, budget, threads = 32, 0.5, 2
    pool = IoPool(
        threads=threads, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=budget
    )
    try:
        src = make_layers(1, 80 * BPC, page, 17)
        copier = NappingGather(src, [page])
        chunks = [list(range(i * BPC, (i + 1) * BPC)) for i in range(80)]
        warm_up(pool, tmp_path, copier, chunks[66:80], 1)  # storage is fast, and the pool has measured it
        fast = statistics.median(pool._store_samples)
        copier.nap_s = 0.001
        stalled = [
            op(tmp_path, copier, chunks[i], load=False, key=bytes([65, 65 + i]) * 18, job=2) for i in (0, 1)
        ]
        interval = sys.getswitchinterval()
        pool.submit(2, stalled, is_load=False)
        sys.setswitchinterval(0.2)
        try:
            end = time.monotonic() + 0.8
            while time.monotonic() < end:
                pass
        finally:
            sys.setswitchinterval(interval)
        assert pool.wait([2], timeout=30)
        assert all(d.success for d in pool.take_finished())
        assert max(pool._store_samples) > 20 * fast, "the stall reached the stores in flight"
        copier.nap_s = 0.0
        dropped = metrics.STORES.labels("dropped")._value.get()
        burst = [
            op(tmp_path, copier, chunks[i], load=False, key=bytes([66, 65 + i]) * 18, job=3)
            for i in range(2, 62)
        ]
        done = run(pool, 3, burst, load=False)
        assert done.success and done.files_ok == 60, done
        assert metrics.STORES.labels("dropped")._value.get() == dropped
        assert all(os.path.exists(o.path) for o in burst)
    finally:
        pool.shutdown()


def test_store_over_the_backlog_budget_is_dropped_counted_by_reason_and_logged_once(tmp_path, caplog):
    """When the bytes queued ahead, at the measured store bandwidth, would take longer than the budget, further
    stores are dropped at submit: reported not stored, counted under reason `backlog`, one warning a minute."""
    page, budget, slow_s = 32, 0.5, 0.2

    class SlowGather(GroupCopier):  # storage that takes slow_s a file
        def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(slow_s)
            super().gather(*args, **kwargs)

    pool = IoPool(threads=1, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=budget)
    try:
        src = make_layers(1, 16 * BPC, page, 16)
        slow = SlowGather(src, [page])
        warm_up(pool, tmp_path, slow, [list(range(i * BPC, (i + 1) * BPC)) for i in range(11, 16)], 1)
        assert pool.store_bandwidth() == pytest.approx(BPC * page / slow_s, rel=0.5)
        dropped = metrics.STORES.labels("dropped")._value.get()
        backlog = metrics.STORES_DROPPED.labels("backlog")._value.get()
        keys = [bytes([66 + i]) * 36 for i in range(11)]
        ops = [
            op(tmp_path, slow, list(range(i * BPC, (i + 1) * BPC)), load=False, key=keys[i], job=2)
            for i in range(1, 11)
        ]
        with caplog.at_level("WARNING", logger="kvfs.connector"):
            done = run(pool, 2, ops, load=False)
        # 0.2 s and 0.4 s of backlog fit the 0.5 s budget; the third store would wait 0.6 s.
        assert done.files_ok == 2 and done.files_failed == 8 and not done.success
        assert [os.path.exists(o.path) for o in ops] == [True, True] + [False] * 8
        assert metrics.STORES.labels("dropped")._value.get() == dropped + 8
        assert metrics.STORES_DROPPED.labels("backlog")._value.get() == backlog + 8
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 1 and "backlog" in warnings[0].getMessage()
    finally:
        pool.shutdown()


class CompilingGather(GroupCopier):
    """A copier whose first gather in each thread takes `compile_s` (a fresh host's Triton compile of the gather
    kernel, which every I/O thread's first store waits for), and later ones `run_s`."""

    compile_s: float = 1.0
    run_s: float = 0.005

    def __post_init__(self) -> None:
        super().__post_init__()
        self.local = threading.local()

    def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(self.run_s if getattr(self.local, "compiled", False) else self.compile_s)
        self.local.compiled = True
        super().gather(*args, **kwargs)


def test_first_stores_compiling_their_kernels_do_not_drop_the_next_burst(tmp_path):
    """A fresh engine's first stores pay one-time costs (the gather kernel's compile, the graph capture) that are
    no measure of the storage: the next prefill step's burst of stores is written in full.  (Before: the first
    store's compile seeded the bandwidth estimate, and at 128k the whole next step, 64 of 508 chunks, was
    dropped on an H100 host.)"""
    page, budget, threads = 32, 0.5, 2
    pool = IoPool(
        threads=threads, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=budget
    )
    try:
        src = make_layers(1, 32 * BPC, page, 23)
        copier = CompilingGather(src, [page])
        keys = [bytes([65 + i // 26, 65 + i % 26]) * 18 for i in range(24)]
        chunks = [list(range(i * BPC, (i + 1) * BPC)) for i in range(24)]
        first = [op(tmp_path, copier, chunks[i], load=False, key=keys[i], job=1) for i in range(8)]
        assert run(
            pool, 1, first, load=False
        ).success  # the first step's stores: admitted, nothing measured yet
        # Steady state is ~run_s a file: the estimate must be of that order, not of the compile.
        assert pool.store_bandwidth() > threads * BPC * page / (20 * copier.run_s), pool.store_bandwidth()
        dropped = metrics.STORES.labels("dropped")._value.get()
        burst = [op(tmp_path, copier, chunks[i], load=False, key=keys[i], job=2) for i in range(8, 24)]
        done = run(pool, 2, burst, load=False)  # 16 files at ~5 ms: 40 ms of backlog against a 0.5 s budget
        assert done.success and done.files_ok == 16, done
        assert metrics.STORES.labels("dropped")._value.get() == dropped
        assert all(os.path.exists(o.path) for o in burst)
    finally:
        pool.shutdown()


def test_staging_is_bounded_by_the_cap():
    pool = IoPool(threads=16, max_file_bytes=1 << 20, device=torch.device("cpu"), max_staging_bytes=4 << 20)
    try:
        # Two host slots a thread on CPU (no device buffer): 2 MiB each.
        assert pool.threads == 2 and pool.staging_bytes == 4 << 20
    finally:
        pool.shutdown()


def test_io_thread_that_cannot_set_up_fails_its_operations_instead_of_hanging(tmp_path, monkeypatch):
    """Staging that cannot be allocated (pinned memory exhausted, a bad device) must end in reported failures
    (vLLM recomputes), never in a job that waits forever."""

    def broken(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot allocate staging")

    monkeypatch.setattr(IoPool, "_thread_state", broken)
    pool = IoPool(threads=2, max_file_bytes=4096, device=torch.device("cpu"), store_budget_s=30.0)
    try:
        page = 32
        c = GroupCopier(make_layers(1, 8, page, 15), [page])
        failed_before = metrics.STORES.labels("failed")._value.get()
        done = run(pool, 1, [op(tmp_path, c, [0, 1, 2, 3], load=False)], load=False)
        assert not done.success and done.files_failed == 1
        assert metrics.STORES.labels("failed")._value.get() == failed_before + 1
        done = run(pool, 2, [op(tmp_path, c, [4, 5, 6, 7], load=True, job=2)], load=True)
        assert not done.success and sorted(done.failed_block_ids) == [4, 5, 6, 7]
        # The load warm-up's wait for the threads' staging ends when they have failed, not at its timeout.
        started = time.monotonic()
        assert pool.thread_staging(timeout_s=20.0) == [] and time.monotonic() - started < 5.0
    finally:
        pool.shutdown()


def test_one_thread_pipeline_keeps_every_file_with_its_own_slot(tmp_path):
    """One I/O thread alternates two staging slots, with stores and loads of many files queued together, one
    file bad and one raising mid-pipeline: every good file lands bit-exact in its own blocks, and only the bad
    ones fail."""
    page, files = 32, 12
    pool = IoPool(threads=1, max_file_bytes=BPC * 2 * page, device=torch.device("cpu"), store_budget_s=30.0)
    try:
        src = make_layers(2, files * BPC, page, 16)
        dst = make_layers(2, files * BPC, page, 17)
        dst_before = [t.clone() for t in dst]
        c, d = GroupCopier(src, [page] * 2), GroupCopier(dst, [page] * 2)
        keys = [bytes([65 + i]) * 36 for i in range(files)]
        ids = [list(range(i * BPC, (i + 1) * BPC)) for i in range(files)]
        half = files // 2
        stores = [op(tmp_path, c, ids[i], load=False, key=keys[i]) for i in range(half)]
        assert run(pool, 1, stores, load=False).success
        os.unlink(stores[2].path)

        class Raising(GroupCopier):
            def scatter(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                raise RuntimeError("scatter failed")

        raising = Raising(dst, [page] * 2)
        # Loads of the first half (reversed block order) queued with stores of the second half.
        loads = [op(tmp_path, d, ids[i][::-1], load=True, key=keys[i], job=2) for i in range(half)]
        loads[4].copier = raising
        more = [op(tmp_path, c, ids[i], load=False, key=keys[i], job=3) for i in range(half, files)]
        pool.submit(3, more, is_load=False)
        pool.submit(2, loads, is_load=True)
        assert pool.wait([2, 3], timeout=30)
        done = {x.job_id: x for x in pool.take_finished()}
        assert done[3].success and done[3].files_ok == files - half
        assert sorted(done[2].failed_block_ids) == sorted(ids[2] + ids[4])
        for i in range(half):
            for s, t, before in zip(src, dst, dst_before, strict=True):
                want = s[ids[i], :page] if i not in (2, 4) else before[ids[i][::-1], :page]
                assert torch.equal(t[ids[i][::-1], :page], want)
        # The second half round-trips too.
        loads = [op(tmp_path, d, ids[i], load=True, key=keys[i], job=4) for i in range(half, files)]
        assert run(pool, 4, loads, load=True).success
        for i in range(half, files):
            for s, t in zip(src, dst, strict=True):
                assert torch.equal(t[ids[i], :page], s[ids[i], :page])
    finally:
        pool.shutdown()


def test_store_service_time_excludes_the_load_read_beside_it_in_the_pipeline(tmp_path, monkeypatch):
    """The drop-at-submit estimate learns a store's own cost (queueing its copies, waiting for them, writing the
    file), not its wall time in the pipeline: a slow load that one thread runs between a store's gather and its
    write must not make later stores look slow (they would be dropped well inside the budget)."""

    page, slow_s = 32, 0.4
    # The pipeline a CPU pool runs for the payloads its helpers hash (every other one is done in one step).
    pool = IoPool(threads=1, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=30.0)
    pool._inline_max = -1
    try:
        src, dst = make_layers(1, 4 * BPC, page, 21), make_layers(1, 4 * BPC, page, 22)

        held = HeldGather(src, [page])
        gathering, release = held.gathering, held.release
        release.set()  # the held copier's shape has run on the thread's slot before: its next store is a sample
        assert run(
            pool, 1, [op(tmp_path, held, list(range(BPC)), load=False, key=b"a" * 36)], load=False
        ).success
        gathering.clear()
        release.clear()
        samples = len(pool._store_samples)
        pool.submit(
            2,
            [op(tmp_path, held, list(range(BPC, 2 * BPC)), load=False, key=b"b" * 36, job=2)],
            is_load=False,
        )
        assert gathering.wait(10)  # the store is in its GPU phase (here: the gather)
        real_load = iopool.load_block

        def slow_read(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(slow_s)
            return real_load(*args, **kwargs)

        monkeypatch.setattr(iopool, "load_block", slow_read)
        pool.submit(
            3,
            [op(tmp_path, GroupCopier(dst, [page]), list(range(BPC)), load=True, key=b"a" * 36, job=3)],
            is_load=True,
        )
        release.set()  # the thread now reads the load's file before it writes the store's file
        assert pool.wait([2, 3], timeout=30)
        done = {d.job_id: d for d in pool.take_finished()}
        assert done[2].success and done[3].success
        assert done[2].seconds >= slow_s, "the store's file was written after the slow load, as pipelined"
        assert len(pool._store_samples) == samples + 1  # the store under test is a sample: its own cost
        assert 0 < pool._store_samples[-1] * BPC * page < slow_s / 2, pool._store_samples[-1]
    finally:
        pool.shutdown()


def test_loads_are_taken_before_stores_queued_earlier(tmp_path):
    """Loads take priority: with a store in flight and three more queued, a load submitted last is served next,
    before any of the queued stores."""
    page = 32
    pool = IoPool(threads=1, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=30.0)
    try:
        src, dst = make_layers(1, 8 * BPC, page, 31), make_layers(1, 8 * BPC, page, 32)
        plain = GroupCopier(src, [page])
        assert run(
            pool, 1, [op(tmp_path, plain, list(range(BPC)), load=False, key=b"a" * 36)], load=False
        ).success
        held = HeldGather(src, [page])
        pool.submit(
            2, [op(tmp_path, held, list(range(BPC)), load=False, key=b"b" * 36, job=2)], is_load=False
        )
        assert held.gathering.wait(10)
        # Three stores queued first, each its own job (a job completes with its last file, so one job of three
        # would hide the order in which its files were served), then the load.
        for i in (1, 2, 3):
            ids = list(range(i * BPC, (i + 1) * BPC))
            store = op(tmp_path, plain, ids, load=False, key=bytes([99 + i]) * 36, job=10 + i)
            pool.submit(10 + i, [store], is_load=False)
        load = op(tmp_path, GroupCopier(dst, [page]), list(range(BPC)), load=True, key=b"a" * 36, job=4)
        pool.submit(4, [load], is_load=True)
        held.release.set()
        assert pool.wait([2, 4, 11, 12, 13], timeout=30)
        order = [d.job_id for d in pool.take_finished()]
        assert sorted(order) == [2, 4, 11, 12, 13]
        assert order.index(4) < min(order.index(j) for j in (11, 12, 13)), (
            f"the load waited behind stores queued before it: {order}"
        )
        assert torch.equal(dst[0][:BPC, :page], src[0][:BPC, :page])
    finally:
        pool.shutdown()


@pytest.mark.usefixtures("python_block_io")  # the full disk is a patched os.pwritev
def test_store_failures_in_the_pipeline_fail_only_their_files_and_are_never_journaled(tmp_path, monkeypatch):
    """Five stores through one thread's pipeline: one whose gather raises, one whose file write finds the disk
    full (ENOSPC from the real pwritev call site).  Those two are reported failed with their blocks, counted,
    leave no file or temp file and no journal record; the three others are stored, journaled, and load back."""
    import errno

    from kvfs.journal import JournalReader, JournalWriter, RecordKind
    from kvfs.layout import BlockKey

    page = 32
    src, dst = make_layers(2, 5 * BPC, page, 41), make_layers(2, 5 * BPC, page, 42)
    keys = [bytes([97 + i]) * 36 for i in range(5)]  # a..e
    ids = [list(range(i * BPC, (i + 1) * BPC)) for i in range(5)]
    full_disk_name = keys[3].hex()[:40]
    real_pwritev = os.pwritev

    def pwritev(fd, buffers, offset, *args):  # type: ignore[no-untyped-def]
        if full_disk_name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, buffers, offset, *args)

    monkeypatch.setattr(os, "pwritev", pwritev)

    class RaisingGather(GroupCopier):
        def gather(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("gather failed")

    journal = JournalWriter(tmp_path, writer_id="pipeline-test")
    pool = IoPool(
        threads=1,
        max_file_bytes=BPC * 2 * page,
        device=torch.device("cpu"),
        store_budget_s=30.0,
        journal=journal,
    )
    try:
        plain = GroupCopier(src, [page] * 2)
        stores = []
        for i in range(5):
            copier = RaisingGather(src, [page] * 2) if i == 1 else plain
            store = op(tmp_path, copier, ids[i], load=False, key=keys[i])
            store.block_key = BlockKey("ns_0123456789ab", None, 0, keys[i][:32].hex(), "kvfs")
            stores.append(store)
        failed_before = metrics.STORES.labels("failed")._value.get()
        done = run(pool, 1, stores, load=False)
        assert not done.success and done.files_ok == 3 and done.files_failed == 2
        assert sorted(done.failed_block_ids) == sorted(ids[1] + ids[3])
        assert metrics.STORES.labels("failed")._value.get() == failed_before + 2
        assert [os.path.exists(s.path) for s in stores] == [True, False, True, False, True]
        leaf = os.path.dirname(stores[0].path)
        assert sorted(os.listdir(leaf)) == sorted(os.path.basename(stores[i].path) for i in (0, 2, 4))
        journal.flush()
        journaled = {
            r.key.block_hash for r in JournalReader(tmp_path).read({}).records if r.kind == RecordKind.STORE
        }
        assert journaled == {keys[i][:32].hex() for i in (0, 2, 4)}
        d = GroupCopier(dst, [page] * 2)
        loads = [op(tmp_path, d, ids[i], load=True, key=keys[i], job=2) for i in (0, 2, 4)]
        assert run(pool, 2, loads, load=True).success
        for i in (0, 2, 4):
            for s, t in zip(src, dst, strict=True):
                assert torch.equal(t[ids[i], :page], s[ids[i], :page])
    finally:
        pool.shutdown()
        journal.close()


def test_in_place_buffers_are_written_and_read_directly_without_the_copier(tmp_path, pool):
    """A FileOp with `buffer` (a CPU-tier row) is stored from and loaded into that memory itself: the copier's
    blocks are neither read nor written, and a file that fails validation is a reported miss."""
    page = 64
    nbytes = BPC * 3 * page
    src = torch.randint(-128, 127, (nbytes,), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    blocks = make_layers(3, 8, page, seed=4)  # what the copier would gather/scatter: must stay out of it
    blocks_before = [t.clone() for t in blocks]
    copier = GroupCopier(blocks, [page] * 3)
    store = op(tmp_path, copier, [0, 1, 2, 3], load=False)
    store.buffer = memoryview(src.numpy()).cast("B")
    assert run(pool, 1, [store], load=False).success
    with open(store.path, "rb") as fh:
        assert fh.read()[HEADER_SIZE:] == src.numpy().tobytes()  # the row's bytes, not the gathered blocks

    dst = torch.zeros(nbytes, dtype=torch.int8)
    load = op(tmp_path, copier, [4, 5, 6, 7], load=True, job=2)
    load.buffer = memoryview(dst.numpy()).cast("B")
    done = run(pool, 2, [load], load=True)
    assert done.success and done.nbytes == nbytes
    assert torch.equal(dst, src)
    for t, before in zip(blocks, blocks_before, strict=True):
        assert torch.equal(t, before)

    _corrupt(store.path, "bitflip")
    bad = op(tmp_path, copier, [4, 5, 6, 7], load=True, job=3)
    bad.buffer = memoryview(torch.zeros(nbytes, dtype=torch.int8).numpy()).cast("B")
    done = run(pool, 3, [bad], load=True)
    assert not done.success and sorted(done.failed_block_ids) == [4, 5, 6, 7]
    for t, before in zip(blocks, blocks_before, strict=True):
        assert torch.equal(t, before)


def test_store_budget_zero_never_drops(tmp_path):
    """kvfs_store_budget 0 turns dropping off: however slow the measured storage, every store is written."""
    page = 32
    pool = IoPool(threads=1, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=0.0)
    try:
        c = GroupCopier(make_layers(1, 8 * BPC, page, 41), [page])
        pool._store_s_per_byte = 1.0  # storage known to be very slow: any budget would drop these
        ops = [
            op(tmp_path, c, list(range(i * BPC, (i + 1) * BPC)), load=False, key=bytes([70 + i]) * 36)
            for i in range(6)
        ]
        done = run(pool, 1, ops, load=False)
        assert done.success and done.files_ok == 6
        assert all(os.path.exists(o.path) for o in ops)
    finally:
        pool.shutdown()


def test_wait_progress_ends_when_a_job_finishes_and_at_once_with_none_in_flight(tmp_path):
    """The worker side of an idle engine step: no wait without jobs in flight, the timeout while a job is held,
    and an early return when it finishes."""
    page = 32
    pool = IoPool(threads=1, max_file_bytes=BPC * page, device=torch.device("cpu"), store_budget_s=30.0)
    try:
        started = time.monotonic()
        pool.wait_progress(5.0)
        assert time.monotonic() - started < 0.5
        held = HeldGather(make_layers(1, BPC, page, 51), [page])
        pool.submit(1, [op(tmp_path, held, list(range(BPC)), load=False)], is_load=False)
        assert held.gathering.wait(10)
        started = time.monotonic()
        pool.wait_progress(0.2)
        assert 0.15 < time.monotonic() - started < 2 and pool.pending_jobs() == 1
        threading.Timer(0.1, held.release.set).start()
        started = time.monotonic()
        pool.wait_progress(5.0)
        assert time.monotonic() - started < 2.5
        (done,) = pool.take_finished()
        assert done.success
        started = time.monotonic()
        pool.wait_progress(5.0)  # nothing in flight, nothing waiting to be taken
        assert time.monotonic() - started < 0.5
    finally:
        held.release.set()
        pool.shutdown()


def test_load_warm_up_is_a_no_op_without_cuda_graphs(tmp_path, pool):
    """On CPU (no graphs) the warm-up captures nothing and moves no byte; loads then work as before.  Its GPU
    half — every slot's load graphs captured before the first load, KV unchanged, no capture by the first
    loads — is checked by `python -m tools.datapath.gpu_check` (`load warm-up`)."""
    page = 64
    src, dst = make_layers(3, 32, page, seed=5), make_layers(3, 32, page, seed=6)
    before = [t.clone() for t in dst]
    assert pool.warm_up_loads([GroupCopier(dst, [page] * 3)], BPC) == 0
    assert len(pool.thread_staging(timeout_s=5.0)) == pool.threads  # every thread set up its staging
    assert all(torch.equal(a, b) for a, b in zip(dst, before, strict=True))
    done = run(pool, 1, [op(tmp_path, GroupCopier(src, [page] * 3), [5, 17, 2, 30], load=False)], load=False)
    assert done.success
    done = run(
        pool, 2, [op(tmp_path, GroupCopier(dst, [page] * 3), [0, 1, 2, 3], load=True, job=2)], load=True
    )
    assert done.success and all(
        torch.equal(s, d)
        for s, d in zip(pages(src, [5, 17, 2, 30], page), pages(dst, [0, 1, 2, 3], page), strict=True)
    )
