"""Journal ingest: segments → catalog, offsets advanced in the same transaction as the records.

A failure anywhere leaves the catalog's offsets where they were, so the same records are read again on the
next attempt: nothing is lost and nothing is applied twice.  Fully consumed closed (or abandoned) segments are
removed after the transaction that consumed them committed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evictor import metrics
from kvfs.gcpause import cyclic_gc_paused
from kvfs.journal import JournalReader
from kvfs.layout import journal_dir

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

log = logging.getLogger("kvfs.evictor.ingest")


@dataclass(slots=True)
class IngestStats:
    records: int = 0
    bad_records: int = 0
    segments_removed: int = 0
    backlog_bytes: int = 0
    lag_s: float | None = None
    duration_s: float = 0.0


class JournalIngester:
    """Reads every writer's segments from the catalog's offsets and applies them; thread-safe (one at a time)."""

    def __init__(self, root: str | Path, catalog: Catalog, *, batch_records: int = 50_000) -> None:
        self.root = Path(root)
        self.catalog = catalog
        self.reader = JournalReader(self.root)
        self.batch_records = batch_records
        self._lock = threading.Lock()
        self.last: IngestStats = IngestStats()
        self.last_success: float = 0.0
        self.total_records = 0

    def ensure_dir(self) -> Path:
        path = journal_dir(self.root)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ingest(self) -> IngestStats:
        """Apply every complete record written so far.  Raises on catalog errors (offsets then unchanged)."""
        with self._lock, cyclic_gc_paused():
            start = time.monotonic()
            stats = IngestStats()
            offsets = dict(self.catalog.journal_offsets())
            oldest: float | None = None
            while True:
                metrics.METADATA_OPS.labels("journal").inc()  # the segment listing (+ reads of open segments)
                batch = self.reader.read(offsets, max_records=self.batch_records)
                changed = {k: v for k, v in batch.offsets.items() if offsets.get(k) != v}
                if batch.records or changed:
                    self.catalog.apply_journal(batch.records, batch.offsets)
                offsets.update(batch.offsets)
                stats.records += len(batch.records)
                stats.bad_records += batch.bad_records
                if batch.records:
                    first = min(r.time for r in batch.records)
                    oldest = first if oldest is None else min(oldest, first)
                if batch.finished:
                    self.reader.remove(batch.finished)
                    self.catalog.forget_segments(batch.finished)
                    for name in batch.finished:
                        offsets.pop(name, None)
                    stats.segments_removed += len(batch.finished)
                if len(batch.records) < self.batch_records:
                    break
            stats.backlog_bytes = self.reader.backlog_bytes(offsets)
            stats.duration_s = time.monotonic() - start
            if oldest is not None:
                stats.lag_s = max(0.0, time.time() - oldest)
                metrics.JOURNAL_LAG_SECONDS.set(stats.lag_s)
            metrics.JOURNAL_RECORDS.inc(stats.records)
            metrics.JOURNAL_BAD_RECORDS_SEEN.inc(stats.bad_records)
            metrics.JOURNAL_SEGMENTS_REMOVED.inc(stats.segments_removed)
            metrics.JOURNAL_BACKLOG_BYTES.set(stats.backlog_bytes)
            self.total_records += stats.records
            self.last = stats
            self.last_success = time.time()
            if stats.records:
                log.debug("ingested %d journal records in %.3fs", stats.records, stats.duration_s)
            return stats
