"""Issue 13, failures 3 and 4: journal records that pass their CRC but carry absurd or future values.

3. A size of 2**64-1 overflowed the catalog (OverflowError on SQLite, bigint out of range on PostgreSQL), so
   the offsets never advanced and no later record was ever ingested; 2**63-1 was stored and overflowed the
   usage sum; time=inf made a block that could never be evicted.
4. A writer whose clock runs a day ahead pinned its blocks: they looked recent until its clock was reached.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from click.testing import CliRunner
from faultlib import Store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from kvfs.catalog import Catalog
from kvfs.cli import main
from kvfs.journal import (
    END_RECORD,
    MAX_RECORD_SIZE,
    JournalRecord,
    RecordKind,
    decode_records,
    encode_record,
    segment_name,
)
from kvfs.layout import BlockKey, journal_dir

DAY = 86400.0


def _segment(root: Path, writer: str, records: list[JournalRecord]) -> None:
    directory = journal_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    data = b"".join(encode_record(r) for r in records) + END_RECORD
    (directory / segment_name(writer, 0)).write_bytes(data)


def _bad(reason: str) -> float:
    return REGISTRY.get_sample_value("kvfs_journal_bad_records_total", {"reason": reason}) or 0.0


def test_absurd_records_are_skipped_and_later_records_ingested(tmp_path: Path, catalog_url: str) -> None:
    store = Store(tmp_path / "root")
    store.block(1)  # the files exist: a STORE counts min(claim, the file's allocated bytes) (issue 20)
    store.block(7)
    now = time.time()
    store_rec = lambda n, size=3000, when=now: JournalRecord(RecordKind.STORE, store.key(n), when, size)  # noqa: E731
    records = [
        store_rec(1),
        store_rec(2, size=2**64 - 1),
        store_rec(3, size=2**63 - 1),
        store_rec(4, when=math.inf),
        store_rec(5, when=math.nan),
        store_rec(6, when=-5.0),
        JournalRecord(RecordKind.STORE, BlockKey(store.namespace, 0, 2**32 - 1, "ab" * 16, "kvfs"), now, 10),
        store_rec(7),
    ]
    _segment(store.root, "w", records)
    before = _bad("invalid")
    base = ["--root", str(store.root), "--catalog", catalog_url]
    runner = CliRunner()
    scanned = runner.invoke(main, [*base, "scan", "--json"])
    assert scanned.exit_code == 0, scanned.output
    assert json.loads(scanned.stdout)["journal_records_ingested"] == 2
    assert _bad("invalid") == before + 6
    du = runner.invoke(main, [*base, "du", "--json"])
    assert du.exit_code == 0, du.output
    assert json.loads(du.stdout)["total_bytes"] == 2 * 3000
    with Catalog.open(catalog_url) as catalog:
        assert {r.key for r in catalog.iter_blocks()} == {store.key(1), store.key(7)}
        assert catalog.journal_offsets()  # advanced past the bad records (and kept: the segment is closed)


def test_future_dated_records_do_not_pin_blocks(tmp_path: Path) -> None:
    """One writer a day ahead stores A; another, on time, stores B later.  A capacity pass must evict A (older
    by the reader's clock), not B."""
    store = Store(tmp_path / "root")
    ahead = [store.block(n) for n in range(4)]
    assert ahead
    _segment(
        store.root,
        "fast",
        [JournalRecord(RecordKind.STORE, store.key(n), time.time() + DAY, 7096) for n in range(4)],
    )
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    base = ["--root", str(store.root), "--catalog", url]
    runner = CliRunner()
    future_before = REGISTRY.get_sample_value("kvfs_journal_future_records_total") or 0.0
    assert runner.invoke(main, [*base, "scan", "--json"]).exit_code == 0
    with Catalog.open(url) as catalog:
        assert max(r.last_access for r in catalog.iter_blocks()) <= time.time()
    time.sleep(0.05)
    on_time = [store.block(n) for n in range(10, 14)]
    _segment(
        store.root,
        "ontime",
        [JournalRecord(RecordKind.STORE, store.key(n), time.time(), 7096) for n in range(10, 14)],
    )
    gc = runner.invoke(
        main, [*base, "gc", "--no-scan", "--policy", "lru", "--max-bytes", str(4 * 7096), "--json"]
    )
    assert gc.exit_code == 0, gc.output
    assert json.loads(gc.stdout)["deleted_files"] == 4
    assert not any(p.exists() for p in ahead)
    assert all(p.exists() for p in on_time)
    assert (REGISTRY.get_sample_value("kvfs_journal_future_records_total") or 0.0) == future_before + 4


@given(
    size=st.integers(min_value=0, max_value=2**64 - 1),
    when=st.floats(allow_nan=True, allow_infinity=True),
    group=st.integers(min_value=0, max_value=2**32 - 1),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_decoded_record_is_in_range(size: int, when: float, group: int) -> None:
    """Fuzz: whatever a checksum-valid record carries, what decodes fits the catalog's columns and is not in
    the future; the rest is counted invalid; and the record after it always decodes."""
    now = 1_800_000_000.0
    key = BlockKey("org_m_0123456789ab", 0, group, "cd" * 16, "kvfs")
    good = JournalRecord(RecordKind.ACCESS, BlockKey("org_m_0123456789ab", 0, 0, "ef" * 16, "kvfs"), now - 1)
    data = encode_record(JournalRecord(RecordKind.STORE, key, when, size)) + encode_record(good)
    decoded = decode_records(data, final=True, now=now)
    assert decoded.records[-1] == good and decoded.end == len(data)
    assert len(decoded.records) + decoded.invalid == 2
    for rec in decoded.records:
        assert 0 <= rec.size <= MAX_RECORD_SIZE and 0 <= rec.time <= now and rec.key.group < 2**31
