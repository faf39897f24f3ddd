"""KvfsTier behind vLLM's CPU tier: store -> lookup -> load through real files, bad files, two replicas."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
from vllm.v1.kv_offload.base import LookupResult, ReqContext  # noqa: E402
from vllm.v1.kv_offload.tiering.base import TransferJob  # noqa: E402
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory  # noqa: E402

from kvfs.blockfile import HEADER_SIZE, BlockIdentity, store_block  # noqa: E402
from kvfs.journal import JournalReader, RecordKind  # noqa: E402
from tests.connector.vllm_helpers import offloading_config, poll  # noqa: E402

ROW = 8192
CHUNKS = 8


class Primary:
    """vLLM's CPU tier memory as the tier sees it: a memoryview of rows, one chunk each."""

    def __init__(self, seed: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed or 0)
        self.rows = (
            torch.randint(0, 255, (CHUNKS, ROW), generator=g, dtype=torch.uint8)
            if seed is not None
            else torch.zeros(CHUNKS, ROW, dtype=torch.uint8)
        )
        self.view = memoryview(self.rows.numpy())


def make_tier(root, primary: Primary, journal: bool = False):  # type: ignore[no-untyped-def]
    spec = type("Spec", (), {"config": offloading_config({})})()
    cfg = {
        "type": "KvfsTier",
        "module_path": "connector.tier",
        "root": str(root),
        "journal": journal,
        "io_threads": 2,
    }
    return SecondaryTierFactory.create_secondary_tier(cfg, primary.view, spec)


def keys(n: int) -> list[bytes]:
    return [secrets.token_bytes(32) + (0).to_bytes(4, "big") for _ in range(n)]


CHUNK_TOKENS = 64  # offloading_config(): 4 blocks of 16 tokens


def chained(ks: list[bytes], first: int = 0) -> ReqContext:
    """A request context as vLLM's offloading scheduler fills it: each key's end-token position."""
    ctx = ReqContext("r")
    for i, k in enumerate(ks):
        ctx.set_offload_key_position(k, (first + i + 1) * CHUNK_TOKENS)
    return ctx


def job(
    job_id: int, ks: list[bytes], chunk_ids: list[int], promotion: bool, ctx: ReqContext | None = None
) -> TransferJob:
    return TransferJob(
        job_id=job_id,
        keys=ks,
        chunk_ids=np.array(chunk_ids, dtype=np.int64),
        is_promotion=promotion,
        req_context=ctx if ctx is not None else chained(ks),
    )


def finish(tier, job_id):  # type: ignore[no-untyped-def]
    got = []
    poll(lambda: got.extend(r for r in tier.get_finished_jobs()) or any(r.job_id == job_id for r in got))
    return next(r for r in got if r.job_id == job_id)


def lookup(tier, key):  # type: ignore[no-untyped-def]
    ctx = ReqContext("q")
    return poll(lambda: (r := tier.lookup(key, ctx)) != LookupResult.RETRY and r)


@pytest.fixture
def stored(tmp_path):
    src = Primary(seed=1)
    tier = make_tier(tmp_path, src, journal=True)
    ks = keys(3)
    result = finish(tier, (tier.submit_store(job(1, ks, [0, 3, 5], False)), 1)[1])
    assert result.success and set(result.successful_keys) == set(ks)
    yield tier, src, ks
    tier.shutdown()


def test_round_trip_through_real_files(stored, tmp_path):
    tier, src, ks = stored
    assert (
        tier.lookup(keys(1)[0], ReqContext("q")) == LookupResult.RETRY
    )  # never blocks: asked again next step
    assert all(lookup(tier, k) == LookupResult.HIT for k in ks)
    files = [p for p in tmp_path.rglob("*.kvfs") if p.is_file()]
    assert len(files) == 3
    dst = Primary()
    reader = make_tier(tmp_path, dst)
    try:
        assert all(lookup(reader, k) == LookupResult.HIT for k in ks)
        reader.submit_load(job(2, ks, [7, 1, 2], True))
        result = finish(reader, 2)
        assert result.success and result.transfer_bytes == 3 * ROW
        for s, d in ((0, 7), (3, 1), (5, 2)):
            assert torch.equal(src.rows[s], dst.rows[d])
        assert not dst.rows[0].any()
    finally:
        reader.shutdown()


def test_store_records_and_stored_events(stored, tmp_path):
    tier, _src, ks = stored
    events = poll(lambda: list(tier.take_events()))
    assert events and not events[0].removed and set(events[0].keys) == set(ks)
    tier.journal.flush()
    batch = JournalReader(tmp_path).read({})
    assert sorted(r.key.block_hash for r in batch.records) == sorted(k[:-4].hex() for k in ks)
    pos = {r.key.block_hash: r.chain_pos for r in batch.records if r.kind == RecordKind.STORE}
    assert [pos[k[:-4].hex()] for k in ks] == [0, 1, 2]


def test_loads_and_touches_journal_their_chain_positions(stored, tmp_path):
    """ACCESS records carry each key's chain position, so the evictor can regroup a request's records into the
    request (adaptive's shadows); a key vLLM gave no position is -1."""
    tier, _src, ks = stored
    tier.journal.flush()
    seen = len(JournalReader(tmp_path).read({}).records)
    assert finish(
        tier, (tier.submit_load(job(7, ks[:2], [3, 4], True, chained(ks[:2], first=4))), 7)[1]
    ).success
    ctx = chained(ks[2:], first=9)
    tier.touch([ks[2], keys(1)[0]], ctx)
    tier.journal.flush()
    accesses = [r for r in JournalReader(tmp_path).read({}).records[seen:] if r.kind == RecordKind.ACCESS]
    assert [(r.key.block_hash, r.chain_pos) for r in accesses[:3]] == [
        (ks[0][:-4].hex(), 4),
        (ks[1][:-4].hex(), 5),
        (ks[2][:-4].hex(), 9),
    ]
    assert accesses[3].chain_pos == -1 and len(accesses) == 4


def test_chain_positions_come_from_the_request_not_the_job(tmp_path):
    """A later job of the same request continues the chain; a key without a whole-chunk position is -1."""
    tier = make_tier(tmp_path, Primary(seed=2), journal=True)
    try:
        ks = keys(4)
        ctx = chained(ks[:2], first=5)
        ctx.set_offload_key_position(ks[2], 3 * CHUNK_TOKENS + 16)  # not a chunk boundary: unknown
        # ks[3]: no position recorded at all: unknown
        assert finish(tier, (tier.submit_store(job(1, ks, [0, 1, 2, 3], False, ctx)), 1)[1]).success
        tier.journal.flush()
        batch = JournalReader(tmp_path).read({})
        pos = {r.key.block_hash: r.chain_pos for r in batch.records if r.kind == RecordKind.STORE}
        assert [pos[k[:-4].hex()] for k in ks] == [5, 6, -1, -1]
    finally:
        tier.shutdown()


def test_a_requests_records_carry_its_time_whatever_job_or_order(tmp_path):
    """Two store jobs of one request (its head a step before its tail), a load and a touch of it: every record
    carries the request's time, so the evictor sees its chain as stored at once (deeper position first on the
    tie) however the files finished; another request's records carry its own."""
    import time

    from connector.chain import request_time

    tier = make_tier(tmp_path, Primary(seed=3), journal=True)
    try:
        ks = keys(4)
        ctx = chained(ks)
        for job_id, (part, rows) in enumerate(((ks[:2], [0, 1]), (ks[2:], [2, 3])), start=1):
            assert finish(tier, (tier.submit_store(job(job_id, part, rows, False, ctx)), job_id)[1]).success
            time.sleep(0.02)
        assert finish(tier, (tier.submit_load(job(3, ks[:1], [4], True, ctx)), 3)[1]).success
        other = chained(ks[:1])
        tier.touch(ks[:1], other)
        tier.journal.flush()
        records = JournalReader(tmp_path).read({}).records
        stamp = request_time(ctx)
        assert request_time(ctx) == stamp and request_time(other) > stamp
        assert [r.time for r in records if r.kind == RecordKind.STORE] == [stamp] * 4
        assert sorted(r.time for r in records if r.kind == RecordKind.ACCESS) == [stamp, request_time(other)]
    finally:
        tier.shutdown()


def test_already_present_chunks_are_not_rewritten(stored, tmp_path):
    tier, _src, ks = stored
    assert all(lookup(tier, k) == LookupResult.HIT for k in ks)
    path = tier.namespace.path(ks[0])
    mtime = os.stat(path).st_mtime_ns
    result = finish(tier, (tier.submit_store(job(9, ks, [1, 2, 4], False)), 9)[1])
    assert result.success and os.stat(path).st_mtime_ns == mtime


def corrupt(path: str, how: str) -> None:
    if how == "deleted":
        os.unlink(path)
    elif how == "truncated":
        os.truncate(path, HEADER_SIZE + 100)
    elif how == "bitflip":
        with open(path, "r+b") as fh:
            fh.seek(HEADER_SIZE + 1000)
            b = fh.read(1)
            fh.seek(HEADER_SIZE + 1000)
            fh.write(bytes([b[0] ^ 1]))
    elif how == "foreign":
        os.unlink(path)
        store_block(path, b"\0" * ROW, BlockIdentity(b"\x07" * 32, b"x"))


@pytest.mark.parametrize("how", ["deleted", "truncated", "bitflip", "foreign"])
def test_bad_file_between_lookup_and_load_is_recomputed(stored, how):
    tier, src, ks = stored
    assert all(lookup(tier, k) == LookupResult.HIT for k in ks)
    corrupt(tier.namespace.path(ks[1]), how)
    tier.submit_load(job(3, ks, [1, 2, 4], True))  # into other slots of the same CPU tier
    result = finish(tier, 3)
    assert not result.success
    assert set(result.successful_keys) == {ks[0], ks[2]}  # the good chunks still load
    assert torch.equal(src.rows[1], src.rows[0]) and torch.equal(src.rows[4], src.rows[5])
    assert tier.lookup(ks[1], ReqContext("q")) == LookupResult.MISS  # recomputed, not retried forever
    # The bad chunk's slot (read in place, as vLLM's own fs tier does) is freed by vLLM, never served: see
    # test_a_bad_file_is_a_miss_in_vllms_tiering_manager.


def test_two_replicas_on_one_root_share_blocks(tmp_path):
    a_mem, b_mem = Primary(seed=5), Primary()
    a, b = make_tier(tmp_path, a_mem, journal=True), make_tier(tmp_path, b_mem, journal=True)
    try:
        ks = keys(2)
        assert lookup(b, ks[0]) == LookupResult.MISS
        assert finish(a, (a.submit_store(job(1, ks, [2, 6], False)), 1)[1]).success
        b.cache.clear()  # b's MISS answer ages out (TTL); a fresh query sees a's files
        assert all(lookup(b, k) == LookupResult.HIT for k in ks)
        b.submit_load(job(2, ks, [0, 1], True))
        assert finish(b, 2).success
        assert torch.equal(a_mem.rows[2], b_mem.rows[0]) and torch.equal(a_mem.rows[6], b_mem.rows[1])
    finally:
        a.shutdown()
        b.shutdown()


def test_vanished_block_is_announced_removed(stored):
    tier, _src, ks = stored
    poll(lambda: list(tier.take_events()))  # the stored event
    os.unlink(tier.namespace.path(ks[0]))
    tier.cache._known[ks[0]] = (True, 0.0)  # an old answer: the next query refreshes it in the background
    assert tier.lookup(ks[0], ReqContext("q")) == LookupResult.HIT  # stale but non-blocking
    events = poll(lambda: [e for e in tier.take_events() if e.removed])
    assert events and events[0].keys == [ks[0]]


def _replica(root, name: str):  # type: ignore[no-untyped-def]
    """vLLM's own TieringOffloadingSpec/Manager (a CPU tier of its own) with KvfsTier from config."""
    from vllm.v1.kv_offload.factory import OffloadingSpecFactory

    extra = {
        "spec_name": "TieringOffloadingSpec",
        "cpu_bytes_to_use": 64 * 16384,
        "secondary_tiers": [
            {"type": "KvfsTier", "module_path": "connector.tier", "root": str(root), "io_threads": 2}
        ],
    }
    config = offloading_config(extra, kv_bytes_per_block=4096, engine_id=f"{name}-{secrets.token_hex(4)}")
    return OffloadingSpecFactory.create_spec(config).get_manager()


def _rows_of(manager):  # type: ignore[no-untyped-def]
    tier = manager.secondary_tiers[0]
    return torch.frombuffer(tier._primary_kv_view.cast("B"), dtype=torch.uint8).view(
        -1, tier.block_size_bytes
    )


def _step(manager) -> None:  # type: ignore[no-untyped-def]
    from vllm.v1.kv_offload.base import ScheduleEndContext

    manager.on_schedule_end(ScheduleEndContext([], []))


def _store_through(manager, root, ks):  # type: ignore[no-untyped-def]
    """Replica `manager` writes random chunks for `ks` to its CPU tier; they cascade to kvfs files."""
    ctx = chained(ks)
    manager.on_new_request(ctx)
    out = manager.prepare_store(ks, ctx)
    rows = _rows_of(manager)
    for i, cid in enumerate(out.store_spec.block_ids):
        rows[int(cid)] = torch.randint(
            0, 255, (rows.shape[1],), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)
        )
    expected = [rows[int(c)].clone() for c in out.store_spec.block_ids]
    manager.complete_store(ks, ctx)
    assert poll(lambda: _step(manager) or len([p for p in root.rglob("*.kvfs") if p.is_file()]) == len(ks))
    return expected


def test_through_vllm_tiering_manager_across_two_replicas(tmp_path):
    """Replica A's CPU-tier chunks cascade to kvfs files; replica B (its own CPU tier) finds them, promotes them
    and reads the same bytes."""
    from connector.tier import KvfsTier

    replica, rows_of, step = (lambda name: _replica(tmp_path, name)), _rows_of, _step
    a, b = replica("a"), replica("b")
    try:
        assert isinstance(a.secondary_tiers[0], KvfsTier)
        ks = keys(2)
        expected = _store_through(a, tmp_path, ks)
        ctx_b = ReqContext("rb")
        b.on_new_request(ctx_b)

        def hit() -> bool:
            step(b)
            return all(b.lookup(k, ctx_b) == LookupResult.HIT for k in ks)

        assert poll(hit)
        load = b.prepare_load(ks, ctx_b)
        rows_b = rows_of(b)
        for want, cid in zip(expected, load.block_ids, strict=True):
            assert torch.equal(rows_b[int(cid)], want)
        del rows_b
    finally:
        a.shutdown()
        b.shutdown()
    stores = [r for r in JournalReader(tmp_path).read({}).records if r.kind == RecordKind.STORE]
    pos = {r.key.block_hash: r.chain_pos for r in stores}
    assert len(stores) == 2 and [pos[k[:-4].hex()] for k in ks] == [0, 1]


@pytest.mark.parametrize("how", ["bitflip", "truncated"])
def test_a_bad_file_is_a_miss_in_vllms_tiering_manager(tmp_path, how):
    """A file that fails validation is read straight into the CPU-tier slot vLLM allocated for its promotion;
    vLLM frees that slot on the reported failure, so the key ends a MISS (recomputed) and is never served,
    while the good chunk promotes and loads."""
    a, b = _replica(tmp_path, "a"), _replica(tmp_path, "b")
    try:
        ks = keys(2)
        expected = _store_through(a, tmp_path, ks)
        corrupt(b.secondary_tiers[0].namespace.path(ks[1]), how)
        ctx = ReqContext("rb")
        b.on_new_request(ctx)
        answers: dict[bytes, object] = {}

        def settled() -> bool:
            _step(b)
            answers.update({k: b.lookup(k, ctx) for k in ks})
            return answers[ks[0]] == LookupResult.HIT and answers[ks[1]] == LookupResult.MISS

        assert poll(settled), answers
        assert b.primary_tier.lookup(ks[1], ctx) == LookupResult.MISS  # its CPU-tier slot was freed
        load = b.prepare_load(ks[:1], ctx)
        assert torch.equal(_rows_of(b)[int(load.block_ids[0])], expected[0])
    finally:
        a.shutdown()
        b.shutdown()
