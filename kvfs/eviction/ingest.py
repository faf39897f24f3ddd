"""Journal ingest, the one loop: segments → catalog, offsets advanced in the same transaction as the records.

`kvfs scan`/`kvfs gc` and the evictor (`evictor.ingest.JournalIngester`, which adds its metrics and status)
both run `ingest_journals`.  A failure anywhere leaves the catalog's offsets where they were, so the same
records are read again on the next attempt: nothing is lost and nothing is applied twice.  Records with
out-of-range fields never get here: `kvfs.journal.decode_records` skips and counts them and their offsets
advance, so one bad record cannot stall ingest.  Fully consumed closed (or abandoned) segments are removed,
when asked, only after the transaction that consumed them committed.

A STORE record's size is the writer's claim; sizes drive deletion, so the catalog takes what the file really
holds instead: each stored file is lstat'ed (root-confined, no symlink followed) and its size becomes
min(claim, allocated bytes), 0 when there is no such regular file.  A writer's records can therefore never
make another namespace's blocks look over the cap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvfs import metrics
from kvfs.fsusage import allocated_bytes
from kvfs.gcpause import cyclic_gc_paused
from kvfs.journal import JournalReader, JournalRecord, RecordKind
from kvfs.layout import journal_dir
from kvfs.safety import RootGuard
from kvfs.scan import register_namespaces

if TYPE_CHECKING:
    from kvfs.catalog import Catalog


@dataclass(slots=True)
class IngestResult:
    records: int = 0
    bad_records: int = 0
    segments_removed: int = 0
    reads: int = 0  # segment listings (each with the reads of the segments that had news)
    oldest_record: float | None = None  # time of the oldest record applied, for the evictor's lag figure
    offsets: dict[str, int] = field(default_factory=dict)  # the offsets after the run


def ingest_journals(
    root: str | os.PathLike[str],
    catalog: Catalog,
    *,
    remove_finished: bool = False,
    batch_records: int = 50_000,
    reader: JournalReader | None = None,
) -> IngestResult:
    """Apply every pending journal record to the catalog, `batch_records` per transaction.

    `remove_finished` also deletes fully consumed closed segments.  Leave it off when another catalog (an
    evictor's) may still need them: the CLI does, so it never takes records away from the evictor.
    Raises on catalog errors (offsets then unchanged from the last committed batch).
    """
    out = IngestResult()
    if not journal_dir(root).is_dir():
        return out
    reader = JournalReader(root) if reader is None else reader
    guard = RootGuard(root)
    known: set[str] | None = None
    with cyclic_gc_paused():
        offsets = dict(catalog.journal_offsets())
        while True:
            out.reads += 1
            batch = reader.read(offsets, max_records=batch_records)
            changed = {k: v for k, v in batch.offsets.items() if offsets.get(k) != v}
            if batch.records:
                # Namespaces new to the catalog take their model from config.json, as a scan would: a name
                # derived from the directory ("org_model") would change under `du --by model` at the next scan.
                if known is None:
                    known = {ns.name for ns in catalog.namespaces()}
                new = {r.key.namespace for r in batch.records} - known
                if new:
                    register_namespaces(os.fspath(root), catalog, new)
                    known |= new
            if batch.records:
                batch.records = checked_store_sizes(guard, batch.records)
            if batch.records or changed:
                catalog.apply_journal(batch.records, batch.offsets)
            offsets.update(batch.offsets)
            out.records += len(batch.records)
            out.bad_records += batch.bad_records
            if batch.records:
                first = min(r.time for r in batch.records)
                out.oldest_record = first if out.oldest_record is None else min(out.oldest_record, first)
            if remove_finished and batch.finished:
                reader.remove(batch.finished)
                catalog.forget_segments(batch.finished)
                for name in batch.finished:
                    offsets.pop(name, None)
                out.segments_removed += len(batch.finished)
            if not batch.records and not changed:
                break
    out.offsets = offsets
    return out


def checked_store_sizes(guard: RootGuard, records: list[JournalRecord]) -> list[JournalRecord]:
    """`records` with each STORE's size replaced by min(claim, the file's allocated bytes); 0 for a file that
    is missing or not a regular file (counted in kvfs_journal_store_sizes_corrected_total)."""
    stores = [i for i, r in enumerate(records) if r.kind is RecordKind.STORE]
    if not stores:
        return records
    stats = guard.lstat_many(records[i].key.relpath() for i in stores)
    out = list(records)
    missing = reduced = 0
    for i, st in zip(stores, stats, strict=True):
        rec = out[i]
        if st is None:
            size = 0
            missing += 1
        else:
            size = min(rec.size, allocated_bytes(st))
            reduced += size < rec.size
        if size != rec.size:
            out[i] = rec.with_size(size)  # every other field kept, whatever fields a record grows
    if missing:
        metrics.JOURNAL_STORE_SIZES_CORRECTED.labels(reason="no_file").inc(missing)
    if reduced:
        metrics.JOURNAL_STORE_SIZES_CORRECTED.labels(reason="over_claimed").inc(reduced)
    return out
