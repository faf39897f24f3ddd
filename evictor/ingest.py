"""The evictor's journal feed: `kvfs.eviction.ingest.ingest_journals` (the one ingest loop, shared with the CLI) plus
the evictor's metrics and `/status` figures (backlog, lag).  Fully consumed segments are removed: the
evictor's catalog is the one that reads them."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evictor import metrics
from kvfs.eviction.ingest import ingest_journals
from kvfs.journal import JournalReader
from kvfs.layout import journal_dir, makedirs_exact

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
        makedirs_exact(path)  # 0770 whatever the umask: writers of the group create their segments there
        return path

    def ingest(self) -> IngestStats:
        """Apply every complete record written so far.  Raises on catalog errors (offsets then unchanged)."""
        with self._lock:
            start = time.monotonic()
            done = ingest_journals(
                self.root,
                self.catalog,
                remove_finished=True,
                batch_records=self.batch_records,
                reader=self.reader,
            )
            # One count per segment listing (+ reads of the segments with news).
            metrics.METADATA_OPS.labels("journal").inc(max(1, done.reads))
            stats = IngestStats(done.records, done.bad_records, done.segments_removed)
            stats.backlog_bytes = self.reader.backlog_bytes(done.offsets)
            stats.duration_s = time.monotonic() - start
            if done.oldest_record is not None:
                stats.lag_s = max(0.0, time.time() - done.oldest_record)
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
