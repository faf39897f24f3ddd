"""Issue 20, item 2: a NUL (or any name no namespace directory can have) in a journal record's namespace.
On PostgreSQL the old decoder passed it through: DataError, offsets never advanced, ingest stopped for good."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

from faultlib import Store, sample, write_segment

from kvfs import journal as jmod
from kvfs.catalog import Catalog
from kvfs.eviction.ingest import ingest_journals
from kvfs.journal import END_RECORD, JournalRecord, RecordKind, decode_records, encode_record
from kvfs.layout import BlockKey


def _raw_record(ns: bytes, block_hash: bytes, size: int, when: float) -> bytes:
    """A checksum-valid STORE record with namespace bytes the encoder would never write."""
    body = jmod._BODY.pack(1, 0, 0, 0, -1, size, when, len(ns), len(block_hash)) + ns + block_hash
    return jmod._FRAME.pack(jmod.SYNC, len(body), zlib.crc32(body)) + body


BAD_NAMES = [
    b"ev\x00il_0123456789ab",
    b"\xff\xfe_0123456789ab",
    b"a/b_0123456789ab",
    b"no_digest",
    b"x_0123456789ab_r1",
]


def test_decoder_rejects_namespaces_no_directory_or_catalog_can_hold() -> None:
    now = time.time()
    good = encode_record(
        JournalRecord(RecordKind.ACCESS, BlockKey("org_m_0123456789ab", 0, 0, "ef" * 16, "kvfs"), now)
    )
    data = b"".join(_raw_record(ns, b"\xab" * 16, 10, now) for ns in BAD_NAMES) + good
    decoded = decode_records(data, final=True, now=now)
    assert [r.key.namespace for r in decoded.records] == ["org_m_0123456789ab"]
    assert decoded.invalid == len(BAD_NAMES) and decoded.bad == 0 and decoded.end == len(data)


def test_nul_namespace_record_is_skipped_and_the_rest_ingested(tmp_path: Path, catalog_url: str) -> None:
    """On PostgreSQL the old decoder passed the NUL through: DataError, offsets never advanced, ingest stopped."""
    store = Store(tmp_path / "root")
    store.block(1)
    store.block(2)
    now = time.time()
    data = (
        encode_record(JournalRecord(RecordKind.STORE, store.key(1), now, 10))
        + _raw_record(b"ev\x00il_0123456789ab", b"\xab" * 16, 10, now)
        + encode_record(JournalRecord(RecordKind.STORE, store.key(2), now, 10))
        + END_RECORD
    )
    write_segment(store.root, "w", data)
    before = sample("kvfs_journal_bad_records_total", reason="invalid")
    with Catalog.open(catalog_url) as catalog:
        done = ingest_journals(store.root, catalog, remove_finished=True)
        assert done.records == 2 and done.segments_removed == 1
        assert {r.key for r in catalog.iter_blocks()} == {store.key(1), store.key(2)}
    assert sample("kvfs_journal_bad_records_total", reason="invalid") == before + 1
