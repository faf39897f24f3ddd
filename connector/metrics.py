"""kvfs counters of the connector (vLLM's own `vllm:kv_offload_*` transfer metrics are fed separately)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from kvfs.metrics import MISS_REASONS

STORES = Counter(
    "kvfs_connector_stores_total",
    "Block files the connector tried to store, by outcome (stored, exists, failed, dropped).",
    ["outcome"],
)
STORES_DROPPED = Counter(
    "kvfs_connector_stores_dropped_total",
    "Stores dropped before writing, by reason (backlog: the queued bytes at the measured store bandwidth would "
    "take longer than kvfs_store_budget).",
    ["reason"],
)
STORE_BYTES = Counter("kvfs_connector_store_bytes_total", "Payload bytes written to new block files.")
LOADS = Counter("kvfs_connector_loads_total", "Block file loads, by outcome (ok, missed).", ["outcome"])
LOAD_MISSES = Counter(
    "kvfs_connector_load_misses_total",
    "Loads that found no usable block file (recomputed), by reason (missing, truncated, corrupt, ...).",
    ["reason"],
)
LOAD_BYTES = Counter("kvfs_connector_load_bytes_total", "Payload bytes read from block files.")
LOOKUPS = Counter(
    "kvfs_connector_lookups_total", "Scheduler lookups answered, by result (hit, miss, retry).", ["result"]
)
EXISTENCE_CHECKS = Counter(
    "kvfs_connector_existence_checks_total", "Files stat()ed by the off-thread existence checker."
)
JOB_SECONDS = Histogram(
    "kvfs_connector_job_seconds",
    "Wall time of a vLLM transfer job (all its block files) from submit to done, by kind (load, store).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IO_SECONDS = Counter(
    "kvfs_connector_io_seconds_total",
    "I/O-thread seconds by operation and stage: read/write (the file), gpu_wait (waiting for the GPU phase of a "
    "file: copies, hash, scatter; for stores also the forward pass they wait behind).",
    ["op", "stage"],
)
QUEUED_STORES = Gauge("kvfs_connector_queued_stores", "Block files waiting in the store queue.")
DEVICE_HASH_DISABLED = Counter(
    "kvfs_connector_device_hash_disabled_total",
    "I/O pools that hash on the CPU because GPU payload hashing failed its start-up self-test.",
)
GRAPH_CAPTURE_FAILED = Counter(
    "kvfs_connector_graph_capture_failed_total",
    "I/O thread staging slots that issue copies eagerly because capturing a CUDA graph failed.",
)
STAGING_BYTES = Gauge(
    "kvfs_connector_staging_bytes", "Pinned host (+ device) staging memory held by I/O threads."
)


def hot_inc(child: Counter) -> Callable[[float], None]:
    """A pre-bound counter child's increment without prometheus_client's per-call wrapper (an observability check,
    a sign check: three Python calls for one add): for the I/O threads' per-file path, with non-negative amounts.
    The same value object `inc` adds to, multiprocess mode included; `inc` itself where there is none."""
    inc = getattr(getattr(child, "_value", None), "inc", None)
    return inc if callable(inc) else child.inc


def hot_set(gauge: Gauge) -> Callable[[float], None]:
    """`hot_inc` for a gauge's `set`."""
    set_ = getattr(getattr(gauge, "_value", None), "set", None)
    return set_ if callable(set_) else gauge.set


# Pre-bound children for the scheduler's hot path (a label lookup costs more than the count).
LOOKUP_HIT = LOOKUPS.labels("hit")
LOOKUP_MISS = LOOKUPS.labels("miss")
LOOKUP_RETRY = LOOKUPS.labels("retry")

# Label values created at 0 (see kvfs/metrics.py, "known label values"): increase() sees the first event.
for _metric, _values in (
    (STORES, ("stored", "exists", "failed", "dropped")),
    (STORES_DROPPED, ("backlog",)),  # connector.iopool.DropReason
    (LOADS, ("ok", "missed")),
    (LOAD_MISSES, MISS_REASONS),
    (JOB_SECONDS, ("load", "store")),
):
    for _value in _values:
        _metric.labels(_value)
