"""Every Prometheus metric of the kvfs core, defined once (names `kvfs_*`).

Hot paths use the pre-bound label children below (``STORE_OUTCOME[...]``, ``LOAD_MISS[...]``) so counting costs
one locked add, not a label lookup.  Other parts may append their own definitions at the end of this file.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- block files (kvfs/blockfile.py) -------------------------------------------------------------------------
# Loads and stores are counted once, by the connector that serves them to vLLM (connector/metrics.py).
O_DIRECT_FALLBACKS = Counter(
    "kvfs_o_direct_fallbacks_total",
    "Times O_DIRECT was wanted but buffered I/O was used (probe failed, unaligned buffer, EINVAL).",
    ["reason"],
)
BLOCK_IO_NATIVE = Gauge(
    "kvfs_block_io_native",
    "1 when block files move through the compiled path (kvfs._blockio, one GIL release a file), 0 on the Python "
    "path (not built, KVFS_NATIVE_IO=0, or its self-test failed: the log says which).",
)
NOT_A_BLOCK = Counter("kvfs_not_a_block_total", "Files under the root that are not block files.")
UNDECODABLE_NAMES = Counter(
    "kvfs_undecodable_names_total", "Namespace-shaped names under the root that are not UTF-8: skipped."
)

# --- journal (kvfs/journal.py) -------------------------------------------------------------------------------
JOURNAL_RECORDS_WRITTEN = Counter(
    "kvfs_journal_records_written_total", "Journal records written to segments."
)
JOURNAL_BYTES = Gauge(
    "kvfs_journal_bytes", "Bytes of this process's closed journal segments on disk (at its last rotation)."
)
JOURNAL_RECORDS_DROPPED = Counter(
    "kvfs_journal_records_dropped_total",
    "Journal records dropped by a writer (buffer full, encode error, write error, journal_bound).",
    ["reason"],
)
JOURNAL_WRITE_ERRORS = Counter(
    "kvfs_journal_write_errors_total", "I/O errors while writing journal segments."
)
JOURNAL_SEGMENTS_CLOSED = Counter(
    "kvfs_journal_segments_closed_total", "Journal segments closed with an end record."
)
JOURNAL_RECORDS_READ = Counter("kvfs_journal_records_read_total", "Valid journal records decoded by readers.")
JOURNAL_BAD_RECORDS = Counter(
    "kvfs_journal_bad_records_total",
    "Malformed journal records skipped (corrupt = bad bytes resynced over; torn_tail = a dead writer's tail; "
    "invalid = checksum-valid record with out-of-range size, time, group, hash or namespace name).",
    ["reason"],
)
JOURNAL_FUTURE_RECORDS = Counter(
    "kvfs_journal_future_records_total",
    "Journal records dated more than the clock-skew allowance ahead of the reader (clamped to its clock).",
)
JOURNAL_STORE_SIZES_CORRECTED = Counter(
    "kvfs_journal_store_sizes_corrected_total",
    "STORE records whose claimed size the catalog did not take (kvfs/ingest.py): no_file = no such regular "
    "file (size 0), over_claimed = more than the file's allocated bytes (size cut to them).",
    ["reason"],
)
JOURNAL_PENDING = Gauge("kvfs_journal_pending_records", "Records queued in this process's journal writers.")

# --- safety (kvfs/safety.py) ---------------------------------------------------------------------------------
UNSAFE_PATHS_REFUSED = Counter(
    "kvfs_unsafe_paths_refused_total",
    "Deletions refused because the path was absolute, had `..`, crossed a symlink or was not a regular file.",
    ["reason"],
)
DIRS_REMOVED = Counter(
    "kvfs_dirs_removed_total", "Empty bucket directories removed after deletions (root-confined rmdir)."
)
UNLINKS = Counter("kvfs_unlinks_total", "Root-confined unlink attempts by result.", ["result"])

# --- catalog (kvfs/catalog) ----------------------------------------------------------------------------------
CATALOG_ERRORS = Counter("kvfs_catalog_errors_total", "Catalog operations that failed.", ["op"])
CATALOG_ROOT_MISMATCH = Counter(
    "kvfs_catalog_root_mismatch_total", "Catalogs refused because they belong to another root."
)

# --- timings -------------------------------------------------------------------------------------------------
JOURNAL_FLUSH_SECONDS = Histogram(
    "kvfs_journal_flush_seconds",
    "Time a journal writer spends per background flush.",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)

# --- catalog and scan (kvfs/catalog, kvfs/scan.py) -----------------------------------------------------------
CATALOG_UNKNOWN_ACCESSES = Counter(
    "kvfs_catalog_unknown_accesses_total",
    "Journal access records for blocks the catalog does not know (ignored: the file was evicted or never stored).",
)
CATALOG_ROWS_UPSERTED = Counter("kvfs_catalog_rows_upserted_total", "Block rows inserted or updated.")
CATALOG_ROWS_REMOVED = Counter(
    "kvfs_catalog_rows_removed_total", "Block rows removed, by why.", ["why"]
)  # why: evicted | missing
CATALOG_CHAIN_MARKS = Counter(
    "kvfs_catalog_chain_marks_total",
    "Block rows the prefix bookkeeping marked: orphan (an ancestor was removed), superseded (a never-read leaf "
    "whose parent got a newer child).",
    ["mark"],
)
SCAN_FILES = Counter("kvfs_scan_files_total", "Block files seen by reconciliation scans.")
SCAN_ERRORS = Counter("kvfs_scan_errors_total", "Directories or entries a scan could not read.")
SCAN_LAST_DURATION = Gauge("kvfs_scan_last_duration_seconds", "Wall time of the last completed scan.")

# --- the eviction pass (kvfs/eviction/: the evictor's, `kvfs gc`'s) and verify ---------------------------------
EVICTED_FILES = Counter(
    "kvfs_evicted_files_total", "Files removed by eviction passes, by reason.", ["reason"]
)
EVICTED_BYTES = Counter(
    "kvfs_evicted_bytes_total", "Bytes removed by eviction passes, by reason.", ["reason"]
)
RECHECK_SPARED = Counter(
    "kvfs_recheck_spared_files_total", "Victims spared because they were used after being chosen."
)
VERIFY_CORRUPT = Counter(
    "kvfs_verify_corrupt_total", "Corrupt kvfs block files found by verify, by reason.", ["reason"]
)
VERIFY_UNREADABLE = Counter(
    "kvfs_verify_unreadable_total",
    "Block files (io_error, not_regular) and directories (dir_unreadable) verify could not read; never deleted.",
    ["reason"],
)

# --- eviction policies (kvfs/policy/twoq.py, history.py, prefix.py) ------------------------------------------
POLICY_RESTORES = Counter(
    "kvfs_policy_restores_total",
    "Blocks stored again after being evicted (2q or prefix ghosts); a high rate means the tier is too small.",
)
POLICY_ORDER = Gauge(
    "kvfs_policy_order",
    "1 for the order the `adaptive` policy ranks victims by since its last pass's preparation, 0 for the others.",
    ["order"],
)
POLICY_BOOKKEEPING_ERRORS = Counter(
    "kvfs_policy_bookkeeping_errors_total",
    "Policy bookkeeping (re-store check, prefix's bonus update, ghost upserts) that failed; the pass went on without it.",
    ["op"],
)

# --- untrusted inputs on the shared mount (kvfs/layout.py) ----------------------------------------------------
NAMESPACE_CONFIGS_REFUSED = Counter(
    "kvfs_namespace_configs_refused_total",
    "Namespace config.json files refused (not_regular, too_large, not_json, unreadable): the namespace is kept "
    "without its fields.",
    ["reason"],
)

# --- known label values --------------------------------------------------------------------------------------
# A labelled counter has no series until its first event, so `increase()` cannot see that event (one refused
# unlink or one corrupt load would never alert).  Every value the code can count is created here, at 0.
# tests/kvfs/test_metrics.py keeps these lists equal to the enums and call sites they come from.
MISS_REASONS = (
    "missing",
    "truncated",
    "bad_magic",
    "bad_version",
    "bad_header",
    "fingerprint_mismatch",
    "key_mismatch",
    "checksum_mismatch",
    "io_error",
    "not_regular",
)  # kvfs.blockfile.MissReason
EVICT_REASONS = ("capacity", "ttl", "quota", "retired", "orphan", "corrupt")  # kvfs.eviction.EvictReason
UNSAFE_PATH_REASONS = (
    "absolute",
    "dotdot",
    "malformed",
    "symlink",
    "not_a_directory",
    "not_regular_file",
    "not_a_segment",
)  # kvfs.safety, kvfs.journal
UNLINK_RESULTS = ("deleted", "missing", "error", "refused")
JOURNAL_DROP_REASONS = ("closed", "buffer_full", "unencodable", "write_error", "journal_bound")
JOURNAL_BAD_REASONS = ("corrupt", "torn_tail", "invalid")
O_DIRECT_FALLBACK_REASONS = ("probe", "open", "unaligned_buffer", "write_einval", "read_einval")


def known_labels(metric: Counter, values: tuple[str, ...]) -> None:
    """Create the series of each label value at 0 (a metric with one label)."""
    for value in values:
        metric.labels(value)


for _metric, _values in (
    (O_DIRECT_FALLBACKS, O_DIRECT_FALLBACK_REASONS),
    (JOURNAL_RECORDS_DROPPED, JOURNAL_DROP_REASONS),
    (JOURNAL_BAD_RECORDS, JOURNAL_BAD_REASONS),
    (UNSAFE_PATHS_REFUSED, UNSAFE_PATH_REASONS),
    (UNLINKS, UNLINK_RESULTS),
    (EVICTED_FILES, EVICT_REASONS),
    (EVICTED_BYTES, EVICT_REASONS),
    (VERIFY_CORRUPT, tuple(r for r in MISS_REASONS if r not in ("missing", "io_error", "not_regular"))),
    (VERIFY_UNREADABLE, ("io_error", "not_regular", "dir_unreadable")),
):
    known_labels(_metric, _values)
