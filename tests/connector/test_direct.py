"""The direct spec on CPU tensors: manager lookups (never blocking), worker stores/loads through real files,
unaligned and multi-group jobs, tensor-parallel ranks, bad files ending as reported failures, two replicas."""

from __future__ import annotations

import os
import secrets
import time

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
from vllm.v1.kv_offload.base import (  # noqa: E402
    CanonicalKVCacheRef,
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
    LookupResult,
    ReqContext,
)

from connector.copier import GroupCopier  # noqa: E402
from connector.manager import KvfsLoadStoreSpec  # noqa: E402
from connector.naming import file_identity_key  # noqa: E402
from connector.spec import KvfsOffloadingSpec  # noqa: E402
from kvfs.blockfile import HEADER_SIZE  # noqa: E402
from tests.connector.vllm_helpers import offloading_config, poll  # noqa: E402

BPC = 4
PAGE = 256
BLOCKS = 32


def kv_caches(groups: int, layers: int, seed: int) -> tuple[CanonicalKVCaches, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randint(-128, 127, (BLOCKS, PAGE), generator=g, dtype=torch.int8)
        for _ in range(groups * layers)
    ]
    caches = CanonicalKVCaches(
        tensors=[CanonicalKVCacheTensor(t, PAGE) for t in tensors],
        group_data_refs=[
            [CanonicalKVCacheRef(g * layers + i, PAGE) for i in range(layers)] for g in range(groups)
        ],
    )
    return caches, tensors


def make_spec(root, *, groups=1, world_size=1, rank=0) -> KvfsOffloadingSpec:  # type: ignore[no-untyped-def]
    extra = {"kvfs_root": str(root), "kvfs_io_threads": 2, "block_size": 64}
    spec = KvfsOffloadingSpec(
        offloading_config(extra, groups=groups, blocks_per_chunk=BPC, world_size=world_size, rank=rank)
    )
    spec.failure_channel = True
    return spec


def key(group: int = 0) -> bytes:
    return secrets.token_bytes(32) + group.to_bytes(4, "big")


def finished(worker, job_id):  # type: ignore[no-untyped-def]
    got = []
    poll(lambda: got.extend(worker.get_finished()) or any(r.job_id == job_id for r in got))
    return next(r for r in got if r.job_id == job_id)


@pytest.fixture
def replica(tmp_path):
    spec = make_spec(tmp_path)
    caches, tensors = kv_caches(1, 3, seed=1)
    worker = spec.get_worker(caches)
    manager = spec.get_manager()
    yield spec, manager, worker, tensors
    worker.shutdown()
    manager.shutdown()


def test_store_lookup_load_round_trip(replica, tmp_path):
    spec, manager, worker, tensors = replica
    ctx = ReqContext("r1")
    ks = [key(), key()]
    assert manager.lookup(ks[0], ctx) == LookupResult.RETRY  # answered off-thread, never blocks the step
    assert poll(lambda: manager.lookup(ks[0], ctx) == LookupResult.MISS)
    out = manager.prepare_store(ks, ctx)
    assert out is not None and out.keys_to_store == ks
    src_ids = [3, 9, 12, 0, 5, 6, 7, 8]
    assert worker.submit_store(1, GPULoadStoreSpec(src_ids, [8], [0]), out.store_spec)
    result = finished(worker, 1)
    assert result.success and result.transfer_size == 2 * BPC * 3 * PAGE
    manager.complete_store(ks, ctx)
    events = poll(lambda: list(manager.take_events()))
    assert events[0].keys == ks and not events[0].removed
    manager.cache.clear()
    assert poll(lambda: all(manager.lookup(k, ctx) == LookupResult.HIT for k in ks))
    # Load both chunks into other blocks of a second replica's KV cache.
    other = make_spec(tmp_path)
    caches, dst = kv_caches(1, 3, seed=2)
    w2 = other.get_worker(caches)
    try:
        dst_ids = [20, 21, 22, 23, 24, 25, 26, 27]
        assert w2.submit_load(2, manager.prepare_load(ks, ctx), GPULoadStoreSpec(dst_ids, [8], [0]))
        assert finished(w2, 2).success
        for s, d in zip(tensors, dst, strict=True):
            assert torch.equal(s[src_ids], d[dst_ids])
    finally:
        w2.shutdown()


def test_unaligned_load_start_inside_the_first_chunk(replica):
    _spec, manager, worker, tensors = replica
    ks = [key(), key()]
    worker.submit_store(1, GPULoadStoreSpec(list(range(8)), [8], [0]), KvfsLoadStoreSpec(ks))
    assert finished(worker, 1).success
    # The GPU prefix cache holds logical blocks 0-1: load logical blocks 2..7 (chunk 0 from block 2).
    worker.submit_load(2, KvfsLoadStoreSpec(ks), GPULoadStoreSpec([10, 11, 12, 13, 14, 15], [6], [2]))
    assert finished(worker, 2).success
    for t in tensors:
        assert torch.equal(t[[2, 3, 4, 5, 6, 7]], t[[10, 11, 12, 13, 14, 15]])


def test_two_groups(tmp_path):
    spec = make_spec(tmp_path, groups=2)
    caches, tensors = kv_caches(2, 2, seed=3)
    worker = spec.get_worker(caches)
    try:
        k0, k1 = key(0), key(1)
        worker.submit_store(
            1, GPULoadStoreSpec([0, 1, 2, 3, 4, 5, 6, 7], [4, 4], [0, 0]), KvfsLoadStoreSpec([k0, k1])
        )
        assert finished(worker, 1).success
        assert os.path.exists(spec.namespace.path(k0)) and "_g1/" in spec.namespace.path(k1)
        worker.submit_load(
            2, KvfsLoadStoreSpec([k0, k1]), GPULoadStoreSpec([16, 17, 18, 19, 20, 21, 22, 23], [4, 4], [0, 0])
        )
        assert finished(worker, 2).success
        for t in tensors[:2]:
            assert torch.equal(t[[0, 1, 2, 3]], t[[16, 17, 18, 19]])
        for t in tensors[2:]:
            assert torch.equal(t[[4, 5, 6, 7]], t[[20, 21, 22, 23]])
    finally:
        worker.shutdown()


def test_tensor_parallel_hit_needs_every_rank(tmp_path):
    ranks = [make_spec(tmp_path, world_size=2, rank=r) for r in (0, 1)]
    workers = [s.get_worker(kv_caches(1, 2, seed=10 + i)[0]) for i, s in enumerate(ranks)]
    manager = ranks[0].get_manager()
    try:
        k = key()
        workers[0].submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([k]))
        assert finished(workers[0], 1).success
        assert "_r0/" in ranks[0].namespace.path(k, 0)
        ctx = ReqContext("r")
        assert poll(lambda: manager.lookup(k, ctx) == LookupResult.MISS)  # rank 1's file is missing
        workers[1].submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([k]))
        assert finished(workers[1], 1).success
        manager.cache.clear()
        assert poll(lambda: manager.lookup(k, ctx) == LookupResult.HIT)
    finally:
        for w in workers:
            w.shutdown()
        manager.shutdown()


@pytest.mark.parametrize("how", ["deleted", "truncated", "bitflip", "foreign_layout"])
def test_bad_file_between_lookup_and_load_reports_failed_blocks(replica, tmp_path, how):
    spec, manager, worker, tensors = replica
    ks = [key(), key()]
    worker.submit_store(1, GPULoadStoreSpec(list(range(8)), [8], [0]), KvfsLoadStoreSpec(ks))
    assert finished(worker, 1).success
    ctx = ReqContext("r")
    assert poll(lambda: all(manager.lookup(k, ctx) == LookupResult.HIT for k in ks))
    path = spec.namespace.path(ks[1])
    if how == "deleted":
        os.unlink(path)
    elif how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "bitflip":
        with open(path, "r+b") as fh:
            fh.seek(-5, os.SEEK_END)
            b = fh.read(1)
            fh.seek(-5, os.SEEK_END)
            fh.write(bytes([b[0] ^ 0x80]))
    else:
        # Another layout's file of the same key (a replica with 5 layers: another fingerprint), same size.
        from kvfs.blockfile import BlockIdentity, store_block

        foreign = KvfsOffloadingSpec(
            offloading_config({"kvfs_root": str(tmp_path), "kvfs_journal": False}, layers=5)
        )
        assert foreign.namespace.fingerprint != spec.namespace.fingerprint
        size = os.path.getsize(path)
        os.unlink(path)
        ident = BlockIdentity(foreign.namespace.fingerprint, file_identity_key(ks[1], 0, BPC))
        assert store_block(path, b"\0" * (size - 4096), ident).outcome == "stored"
    before = [t[[20, 21, 22, 23, 24, 25, 26, 27]].clone() for t in tensors]
    worker.submit_load(2, KvfsLoadStoreSpec(ks), GPULoadStoreSpec([20, 21, 22, 23, 24, 25, 26, 27], [8], [0]))
    result = finished(worker, 2)
    assert not result.success
    assert sorted(worker.failed_load_blocks[2]) == [24, 25, 26, 27]  # only the bad chunk's blocks
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t[[20, 21, 22, 23]], t[[0, 1, 2, 3]])  # the good chunk loaded
        assert torch.equal(t[[24, 25, 26, 27]], b[4:])  # the bad one left untouched for recompute


def test_dropped_store_is_never_announced(replica):
    _spec, manager, worker, _tensors = replica
    worker.pool.store_budget_s = 0.001
    worker.pool._store_s_per_byte = 1.0  # storage known to be slow: the store is dropped at submit
    k = key()
    ctx = ReqContext("r")
    worker.submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([k]))
    assert not finished(worker, 1).success
    manager.complete_store([k], ctx)  # vLLM completes the job either way
    assert manager.cache.wait_idle()
    assert list(manager.take_events()) == []
    assert manager.cache.take_unverified() == [k]


def test_journal_records_stores_and_accesses(replica, tmp_path):
    from kvfs.journal import JournalReader, RecordKind

    _spec, manager, worker, _ = replica
    k = key()
    worker.submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([k]))
    assert finished(worker, 1).success
    manager.prepare_load([k], ReqContext("r"))
    worker.pool.journal.flush()
    manager.flush_journal()
    records = JournalReader(tmp_path).read({}).records
    kinds = sorted((r.kind, r.key.block_hash) for r in records)
    assert kinds == [(RecordKind.STORE, k[:-4].hex()), (RecordKind.ACCESS, k[:-4].hex())]
    # The file's size (header + payload), as a scan counts it: du must not change when a scan follows ingest.
    stored = next(r for r in records if r.kind == RecordKind.STORE)
    assert stored.size == HEADER_SIZE + BPC * 3 * PAGE == os.path.getsize(tmp_path / stored.key.relpath())
    assert (
        next(r for r in records if r.kind == RecordKind.STORE).chain_pos == -1
    )  # no request context: unknown


def test_loads_and_touches_journal_their_chain_positions(replica, tmp_path):
    """ACCESS records carry each key's chain position from the request context (the evictor regroups a
    request's records by it, for adaptive's shadows); without one they say -1."""
    from kvfs.journal import JournalReader, RecordKind

    _spec, manager, _worker, _ = replica
    ks = [key() for _ in range(3)]
    ctx = ReqContext("r")
    chunk_tokens = 16 * BPC  # offloading_config(): 16-token blocks
    for i, k in enumerate(ks[:2]):
        ctx.set_offload_key_position(k, (i + 1) * chunk_tokens)
    manager.prepare_load(ks[:2], ctx)
    manager.touch([ks[2]], ReqContext("q"))
    manager.flush_journal()
    records = [r for r in JournalReader(tmp_path).read({}).records if r.kind == RecordKind.ACCESS]
    assert [(r.key.block_hash, r.chain_pos) for r in records] == [
        (ks[0][:-4].hex(), 0),
        (ks[1][:-4].hex(), 1),
        (ks[2][:-4].hex(), -1),
    ]


def test_store_journals_chain_positions_from_the_request_context(replica, tmp_path):
    """prepare_store turns vLLM's per-key end-token positions into chain positions; the worker journals them."""
    from kvfs.journal import JournalReader, RecordKind

    _spec, manager, worker, _ = replica
    ks = [key() for _ in range(3)]
    ctx = ReqContext("r")
    chunk_tokens = 16 * BPC  # offloading_config(): 16-token blocks
    for i, k in enumerate(ks[:2]):
        ctx.set_offload_key_position(k, (i + 2) * chunk_tokens)  # chunks 1 and 2 of the request's chain
    out = manager.prepare_store(ks, ctx)
    assert out.store_spec.chain_pos == [1, 2, -1]  # ks[2]: vLLM recorded no position
    worker.submit_store(1, GPULoadStoreSpec(list(range(3 * BPC)), [3 * BPC], [0]), out.store_spec)
    assert finished(worker, 1).success
    worker.pool.journal.flush()
    stores = [r for r in JournalReader(tmp_path).read({}).records if r.kind == RecordKind.STORE]
    pos = {r.key.block_hash: r.chain_pos for r in stores}
    assert len(stores) == 3 and [pos[k[:-4].hex()] for k in ks] == [1, 2, -1]
    # Parents where the job holds the chunk before: ks[1] follows ks[0]; ks[0]'s parent (chunk 0) was stored
    # earlier, ks[2] has no position.
    parent = {r.key.block_hash: r.parent for r in stores}
    assert [parent[k[:-4].hex()] for k in ks] == [None, ks[0][:-4].hex(), None]
    with pytest.raises(ValueError, match="2 chain positions for 3 keys"):
        KvfsLoadStoreSpec(ks, [0, 1])


def test_a_requests_records_share_its_time_so_its_head_outlives_its_tail(replica, tmp_path):
    """A chunked prefill stores a request's head a step before its tail (and parallel I/O threads finish in any
    order): each record stamped when its file finished made the head older than the tail, and LRU at a pass's
    boundary took the head, leaving the tail unloadable.  Every record of the request carries its time, so the
    tie goes to the deeper chain position: the tail goes first."""
    from connector.chain import request_time
    from kvfs.catalog import Catalog
    from kvfs.eviction import Limits, run_pass
    from kvfs.eviction.ingest import ingest_journals
    from kvfs.journal import JournalReader, RecordKind
    from kvfs.policy import get_policy

    _spec, manager, worker, _ = replica
    ks = [key() for _ in range(4)]
    ctx = ReqContext("r")
    chunk_tokens = 16 * BPC  # offloading_config(): 16-token blocks
    for i, k in enumerate(ks):
        ctx.set_offload_key_position(k, (i + 1) * chunk_tokens)
    for job, part in enumerate((ks[:2], ks[2:]), start=1):  # two prefill steps, head first
        out = manager.prepare_store(part, ctx)
        worker.submit_store(job, GPULoadStoreSpec(list(range(2 * BPC)), [2 * BPC], [0]), out.store_spec)
        assert finished(worker, job).success
        time.sleep(0.02)
    manager.prepare_load(ks[:1], ctx)  # the same request loading (resumed after a preemption): its time too
    manager.prepare_load(ks[:1], ReqContext("next"))  # another request: its own, later time
    worker.pool.journal.flush()
    manager.flush_journal()
    records = JournalReader(tmp_path).read({}).records
    stamp = request_time(ctx)
    assert [r.time for r in records if r.kind == RecordKind.STORE] == [stamp] * 4
    accesses = sorted(r.time for r in records if r.kind == RecordKind.ACCESS)
    assert accesses[0] == stamp < accesses[1]
    # The evictor's order on those records: LRU over the first request's blocks takes the tail first.
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog:
        assert ingest_journals(tmp_path, catalog).records == 6
        size = next(r.size for r in records if r.kind == RecordKind.STORE)
        outcome = run_pass(
            catalog,
            tmp_path,
            Limits(max_bytes=2 * size, min_age=0.0),
            get_policy("lru"),
            dry_run=True,
            now=time.time() + 1,
        )
    victims = [v.key.block_hash for v in outcome.plan.victims]
    assert victims == [ks[3][:-4].hex(), ks[2][:-4].hex()]


def test_unplannable_jobs_complete_without_crashing(replica):
    _spec, _manager, worker, tensors = replica
    before = [t[[8, 9, 10, 11]].clone() for t in tensors]
    # A key of a KV group this worker does not have: the store completes, nothing written or announced.
    assert worker.submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([key(group=7)]))
    assert finished(worker, 1).transfer_size == 0
    # More GPU blocks than the keys cover: the load fails as a whole and its blocks are reported.
    assert worker.submit_load(2, KvfsLoadStoreSpec([key()]), GPULoadStoreSpec([8, 9, 10, 11, 12], [5], [0]))
    assert not finished(worker, 2).success
    assert sorted(worker.failed_load_blocks[2]) == [8, 9, 10, 11, 12]
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t[[8, 9, 10, 11]], b)


def test_replicated_layout_ranks_share_one_file(tmp_path):
    extra = {"kvfs_root": str(tmp_path), "kvfs_io_threads": 1, "kvfs_journal": False}
    specs = []
    for rank in (0, 1):
        spec = KvfsOffloadingSpec(
            offloading_config(extra, blocks_per_chunk=BPC, world_size=2, rank=rank, replicated_layout=True)
        )
        spec.failure_channel = True
        specs.append(spec)
    assert specs[0].replicated_layout and specs[0].namespace.world_size == 1
    caches0, src = kv_caches(1, 2, seed=20)
    caches1, dst = kv_caches(1, 2, seed=21)
    w0, w1 = specs[0].get_worker(caches0), specs[1].get_worker(caches1)
    try:
        k = key()
        w0.submit_store(1, GPULoadStoreSpec([0, 1, 2, 3], [4], [0]), KvfsLoadStoreSpec([k]))
        assert finished(w0, 1).success
        assert "_r" not in os.path.basename(
            os.path.dirname(os.path.dirname(os.path.dirname(specs[0].namespace.path(k))))
        )
        w1.submit_load(2, KvfsLoadStoreSpec([k]), GPULoadStoreSpec([4, 5, 6, 7], [4], [0]))
        assert finished(w1, 2).success  # rank 1 reads rank 0's file: the bytes are identical on every rank
        for s, d in zip(src, dst, strict=True):
            assert torch.equal(s[[0, 1, 2, 3]], d[[4, 5, 6, 7]])
    finally:
        w0.shutdown()
        w1.shutdown()


def test_completed_load_rechecks_its_files(replica):
    spec, manager, _worker, _ = replica
    k = key()
    ctx = ReqContext("r")
    path = spec.namespace.path(k)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    assert poll(lambda: manager.lookup(k, ctx) == LookupResult.HIT)
    os.unlink(path)  # evicted while the load ran
    assert manager.lookup(k, ctx) == LookupResult.HIT  # still the cached answer (TTL not reached)
    manager.complete_load([k], ctx)
    assert poll(lambda: manager.lookup(k, ctx) == LookupResult.MISS)
    # Never announced as stored by this replica, so no removal is announced either.
    assert not [e for e in manager.take_events() if e.removed]


def test_the_worker_compiles_its_copy_kernels_at_start_and_leaves_the_kv_cache_as_it_was(
    tmp_path, monkeypatch
):
    """A new worker runs each group's gather and scatter once over a whole chunk (on a GPU: the Triton kernels
    compile at engine start, not in the first request's stores or loads, seconds on a fresh host), copying block
    0 onto itself: not one byte of the KV cache changes."""
    calls: list[tuple[str, int]] = []
    real_gather, real_scatter = GroupCopier.gather, GroupCopier.scatter

    def gather(self, ids, out):  # type: ignore[no-untyped-def]
        calls.append(("gather", len(ids)))
        real_gather(self, ids, out)

    def scatter(self, src, ids, **kw):  # type: ignore[no-untyped-def]
        calls.append(("scatter", len(ids)))
        real_scatter(self, src, ids, **kw)

    monkeypatch.setattr(GroupCopier, "gather", gather)
    monkeypatch.setattr(GroupCopier, "scatter", scatter)
    caches, tensors = kv_caches(2, 3, seed=7)
    before = [t.clone() for t in tensors]
    worker = make_spec(tmp_path, groups=2).get_worker(caches)
    try:
        assert calls == [("gather", BPC), ("scatter", BPC)] * 2  # each group, a whole chunk
        assert all(torch.equal(a, b) for a, b in zip(before, tensors, strict=True))
    finally:
        worker.shutdown()
