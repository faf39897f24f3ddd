"""Prometheus metrics of the evictor (`kvfs_evictor_*`, plus per-namespace `kvfs_namespace_*`).

Defined once here, in the default registry, so `/metrics` also carries the core library's `kvfs_*` metrics.
The per-namespace label is `kvfs_namespace`: `namespace` is the Kubernetes target label Prometheus attaches to
every scraped sample, and a clash would rename ours to `exported_namespace`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE_BYTES = Gauge(
    "kvfs_namespace_bytes", "Bytes of block files per kvfs namespace (catalog)", ["kvfs_namespace"]
)
NAMESPACE_FILES = Gauge(
    "kvfs_namespace_files", "Block files per kvfs namespace (catalog)", ["kvfs_namespace"]
)
USAGE_BYTES = Gauge("kvfs_evictor_usage_bytes", "Used bytes the watermarks are compared with")
CAPACITY_BYTES = Gauge("kvfs_evictor_capacity_bytes", "Capacity the watermarks are percentages of")
USAGE_RATIO = Gauge("kvfs_evictor_usage_ratio", "Usage / capacity (0..1)")
WATERMARK_RATIO = Gauge("kvfs_evictor_watermark_ratio", "Configured watermarks (0..1)", ["mark"])
OVER_HIGH_WATERMARK = Gauge("kvfs_evictor_over_high_watermark", "1 while a capacity eviction is due")

LAST_PASS_SUCCESS = Gauge(
    "kvfs_evictor_last_pass_success_timestamp_seconds",
    "End of the last pass that did what was due (nothing due, or something removed)",
)
PASS_STALLED = Gauge(
    "kvfs_evictor_pass_stalled",
    "1 while the last pass could not do what was due, by cause (unknown_namespace, protected_by_min_age, "
    "deletes_failing, catalog_errors)",
    ["cause"],
)
ENFORCE_PASSES = Counter("kvfs_evictor_enforce_passes", "Enforcement passes, by outcome", ["outcome"])
ENFORCE_SECONDS = Histogram(
    "kvfs_evictor_enforce_seconds",
    "Duration of one enforcement pass",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PLAN_SECONDS = Gauge("kvfs_evictor_last_plan_seconds", "Duration of the last victim selection")

JOURNAL_RECORDS = Counter("kvfs_evictor_journal_records", "Journal records applied to the catalog")
JOURNAL_BAD_RECORDS_SEEN = Counter(
    "kvfs_evictor_journal_bad_records", "Malformed or torn journal records skipped during ingest"
)
JOURNAL_BACKLOG_BYTES = Gauge("kvfs_evictor_journal_backlog_bytes", "Journal bytes not yet ingested")
JOURNAL_LAG_SECONDS = Gauge(
    "kvfs_evictor_journal_lag_seconds",
    "Age of the oldest record of the last ingest that applied records, at the moment it was ingested",
)
JOURNAL_SEGMENTS_REMOVED = Counter("kvfs_evictor_journal_segments_removed", "Fully ingested segments removed")
TREE_WATCH_READY = Gauge("kvfs_evictor_tree_watch_ready", "1 while the tree watcher covers the whole tree")
TREE_WATCH_SETUP_SECONDS = Gauge(
    "kvfs_evictor_tree_watch_setup_seconds", "Time the tree watcher took to add its watches (background)"
)
TREE_EVENTS = Counter("kvfs_evictor_tree_events", "Block file events from the tree watcher", ["kind"])
TREE_WATCH_OVERFLOWS = Counter(
    "kvfs_evictor_tree_watch_overflows",
    "Times the tree watcher lost events (inotify queue overflow); each one scans",
)

# A scan's files are counted in kvfs_scan_files_total and its wall time in kvfs_scan_last_duration_seconds
# (kvfs/metrics.py): rate() of the counter, not a rate gauge.
SCAN_LAST_TIME = Gauge("kvfs_evictor_scan_last_timestamp_seconds", "End of the last reconciliation scan")
SCANS = Counter("kvfs_evictor_scans", "Reconciliation scans, by outcome", ["outcome"])
TEMP_FILES_KNOWN = Gauge("kvfs_evictor_temp_files_known", "Temp files known (from scans and the watcher)")

# Every stat/scandir/statvfs the evictor issues (or the polling watcher issues for it), by source: under the
# watermark with watch=off or inotify only `journal` and `statvfs` move.
METADATA_OPS = Counter("kvfs_evictor_metadata_ops", "Filesystem metadata operations, by source", ["source"])

IS_LEADER = Gauge("kvfs_evictor_leader", "1 while this instance is the leader (enforces and writes)")
LEADER_CHANGES = Counter(
    "kvfs_evictor_leader_changes", "Times this instance gained or lost leadership", ["change"]
)
READY = Gauge("kvfs_evictor_ready", "1 while /readyz answers 200")
ERRORS = Counter(
    "kvfs_evictor_errors", "Errors by kind (catalog, leader, journal, scan, enforce, delete, watch)", ["kind"]
)


# Label values created at 0 (see kvfs/metrics.py, "known label values"): increase() sees the first event.
ERROR_KINDS = ("catalog", "leader", "journal", "scan", "enforce", "delete", "watch")
PASS_OUTCOMES = ("idle", "evicted", "stalled", "failed")
for _metric, _values in (
    (ENFORCE_PASSES, PASS_OUTCOMES),
    (SCANS, ("ok", "failed")),
    (LEADER_CHANGES, ("gained", "lost")),
    (TREE_EVENTS, ("upsert", "remove")),
    (METADATA_OPS, ("journal", "scan", "watch", "statvfs")),
    (ERRORS, ERROR_KINDS),
):
    for _value in _values:
        _metric.labels(_value)
