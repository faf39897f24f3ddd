"""The per-writer journal bound while no evictor consumes the segments: access records go (oldest first, counted),
store records never."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from kvfs.journal import JournalReader, JournalWriter, RecordKind
from kvfs.layout import BlockKey, journal_dir


def key(i: int) -> BlockKey:
    return BlockKey("org_m_0123456789ab", 0, 0, f"{i:032x}", "kvfs")


def dropped() -> float:
    return REGISTRY.get_sample_value("kvfs_journal_records_dropped_total", {"reason": "journal_bound"}) or 0.0


def on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in journal_dir(root).iterdir())


def test_journal_stays_bounded_keeping_every_store_and_the_newest_accesses(tmp_path: Path) -> None:
    bound = 64 << 10
    before = dropped()
    with JournalWriter(
        tmp_path, writer_id="w", max_segment_bytes=4096, max_journal_bytes=bound, fsync=False
    ) as writer:
        for i in range(200):
            writer.record_store(key(i), 4096, chain_pos=i, now=1000.0 + i)
        writer.flush()
        for n in range(20_000):  # ~1.7 MB of access records, 26x the bound
            writer.record_access(key(n % 200), now=2000.0 + n)
            if n % 500 == 499:
                writer.flush()
                assert on_disk(tmp_path) <= bound + 4096 * 2  # at most the open segment and one rotation over
    records = JournalReader(tmp_path, abandon_after=0).read({}).records
    stores = [r for r in records if r.kind is RecordKind.STORE]
    accesses = [r for r in records if r.kind is RecordKind.ACCESS]
    assert sorted(r.key.block_hash for r in stores) == sorted(key(i).block_hash for i in range(200))
    assert {r.chain_pos for r in stores} == set(range(200))  # re-written records are whole
    assert 0 < len(accesses) < 20_000
    # The accesses kept are the newest ones, with no gap: exactly the oldest were dropped.
    times = sorted(r.time for r in accesses)
    assert times == [2000.0 + n for n in range(20_000 - len(accesses), 20_000)]
    assert dropped() - before == 20_000 - len(accesses)
    assert REGISTRY.get_sample_value("kvfs_journal_bytes") is not None


def test_no_bound_keeps_everything(tmp_path: Path) -> None:
    with JournalWriter(
        tmp_path, writer_id="w", max_segment_bytes=4096, max_journal_bytes=0, fsync=False
    ) as w:
        for n in range(3000):
            w.record_access(key(n), now=1.0 + n)
    assert len(JournalReader(tmp_path, abandon_after=0).read({}).records) == 3000
