"""Issue 20, item 9: a journal segment with >= 64 MiB of non-record bytes before a good record: the record
was never ingested and the segment never removed (the reader resynced only within one 64 MiB read)."""

from __future__ import annotations

import time
from pathlib import Path

from faultlib import Store, sample, segment_bytes, write_segment

from kvfs import journal as jmod
from kvfs.catalog import Catalog
from kvfs.eviction.ingest import ingest_journals
from kvfs.journal import END_RECORD, JournalRecord, RecordKind, encode_record


def test_record_after_64_mib_of_garbage_is_ingested_and_segment_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    store.block(1)
    garbage = bytes(jmod._MAX_READ_PER_SEGMENT + (1 << 20))  # zeros: not one sync marker
    record = JournalRecord(RecordKind.STORE, store.key(1), time.time(), 10)
    path = write_segment(store.root, "w", garbage + segment_bytes(record))
    before = sample("kvfs_journal_bad_records_total", reason="corrupt")
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog:
        done = ingest_journals(store.root, catalog, remove_finished=True)
        assert done.records == 1 and done.segments_removed == 1
        assert [r.key for r in catalog.iter_blocks()] == [store.key(1)]
    assert not path.exists()
    assert sample("kvfs_journal_bad_records_total", reason="corrupt") > before


def test_garbage_between_chunks_keeps_a_record_that_straddles_the_chunk_end(tmp_path: Path) -> None:
    """The skip stops short of the chunk's end by one record's length, so a record cut by the read is kept."""
    store = Store(tmp_path / "root")
    store.block(1)
    record = encode_record(JournalRecord(RecordKind.STORE, store.key(1), time.time(), 10))
    garbage = bytes(jmod._MAX_READ_PER_SEGMENT - len(record) // 2)
    write_segment(store.root, "w", garbage + record + END_RECORD)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog:
        done = ingest_journals(store.root, catalog, remove_finished=True)
        assert done.records == 1 and done.segments_removed == 1
