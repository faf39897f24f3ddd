"""Metric definitions: label names Prometheus will not rename, counters that exist before their first event,
and the known-label lists equal to the enums and call sites they mirror."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import prometheus_client

import connector.metrics  # noqa: F401 - registers the connector's metrics
import evictor.metrics  # noqa: F401 - registers the evictor's metrics
from connector.iopool import DropReason
from kvfs import blockfile, metrics
from kvfs.blockfile import MissReason, StoreOutcome
from kvfs.eviction.limits import EvictReason

REPO = Path(__file__).resolve().parents[2]
# Labels Prometheus (or the operator's ServiceMonitor) attaches to every scraped sample: a metric label of the
# same name is renamed `exported_<name>` unless honorLabels is set, and queries by it silently break.
TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint", "job", "instance", "node"}


def kvfs_families() -> list[prometheus_client.Metric]:
    return [f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("kvfs_")]


def test_no_kvfs_metric_uses_a_prometheus_target_label() -> None:
    clashes = {
        (f.name, label)
        for f in kvfs_families()
        for s in f.samples
        for label in s.labels
        if label in TARGET_LABELS
    }
    assert clashes == set()
    assert evictor.metrics.NAMESPACE_BYTES._labelnames == ("kvfs_namespace",)
    assert evictor.metrics.NAMESPACE_FILES._labelnames == ("kvfs_namespace",)


def fresh_exposition() -> str:
    """/metrics text of a process that imported the metrics modules and counted nothing."""
    code = (
        "import prometheus_client, kvfs.metrics, evictor.metrics, connector.metrics;"
        "print(prometheus_client.generate_latest().decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout


def test_labelled_counters_exist_at_zero_before_their_first_event() -> None:
    text = fresh_exposition()
    for sample in (
        'kvfs_unsafe_paths_refused_total{reason="symlink"} 0.0',
        'kvfs_unsafe_paths_refused_total{reason="not_a_segment"} 0.0',
        'kvfs_connector_load_misses_total{reason="truncated"} 0.0',
        'kvfs_evicted_files_total{reason="capacity"} 0.0',
        'kvfs_evicted_bytes_total{reason="orphan"} 0.0',
        'kvfs_unlinks_total{result="refused"} 0.0',
        'kvfs_journal_records_dropped_total{reason="journal_bound"} 0.0',
        'kvfs_connector_stores_dropped_total{reason="backlog"} 0.0',
        'kvfs_evictor_errors_total{kind="delete"} 0.0',
        'kvfs_evictor_enforce_passes_total{outcome="stalled"} 0.0',
    ):
        assert sample in text, sample


def test_known_label_lists_match_their_enums() -> None:
    assert set(metrics.MISS_REASONS) == {r.value for r in MissReason}
    assert {o.value for o in StoreOutcome} <= {
        s.labels["outcome"] for s in connector.metrics.STORES.collect()[0].samples
    }
    assert set(metrics.EVICT_REASONS) == {r.value for r in EvictReason}
    assert {r.value for r in DropReason} <= {
        s.labels["reason"] for s in connector.metrics.STORES_DROPPED.collect()[0].samples
    }


def literal_labels(path: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, (REPO / path).read_text()))


def test_known_label_lists_cover_every_value_the_code_counts() -> None:
    # Literal values passed at the call sites (a new one must be added to the list, or it has no series at 0).
    safety = (REPO / "kvfs" / "safety.py").read_text().splitlines()
    unsafe = {
        v
        for line in safety
        if "raise UnsafePath(" in line or "reason = " in line
        for v in re.findall(r'"([a-z_]+)"', line)
    }
    unsafe |= literal_labels("kvfs/journal.py", r'UNSAFE_PATHS_REFUSED\.labels\(reason="([a-z_]+)"\)')
    assert unsafe and unsafe <= set(metrics.UNSAFE_PATH_REASONS)
    dropped = literal_labels("kvfs/journal.py", r'JOURNAL_RECORDS_DROPPED\.labels\(reason="([a-z_]+)"\)')
    assert dropped == set(metrics.JOURNAL_DROP_REASONS)
    bad = literal_labels("kvfs/journal.py", r'JOURNAL_BAD_RECORDS\.labels\(reason="([a-z_]+)"\)')
    assert bad == set(metrics.JOURNAL_BAD_REASONS)
    fallbacks = literal_labels("kvfs/blockfile.py", r'_direct_fallback\("([a-z_]+)"\)') | {"probe"}
    fallbacks |= set(blockfile._NATIVE_FALLBACKS.values())  # the compiled path's reasons, by code
    assert fallbacks == set(metrics.O_DIRECT_FALLBACK_REASONS)
    kinds = literal_labels("evictor/service.py", r'_failed\("([a-z]+)"') | {
        v
        for f in ("evictor/service.py", "evictor/passes.py", "evictor/leader.py")
        for v in literal_labels(f, r'ERRORS\.labels\("([a-z]+)"\)')
    }
    assert kinds == set(evictor.metrics.ERROR_KINDS)


def test_journal_lag_help_says_what_is_measured_and_the_docs_agree() -> None:
    # evictor/ingest.py sets it from the oldest record of an ingest; the help and docs/evictor.md say the same.
    assert "oldest record" in evictor.metrics.JOURNAL_LAG_SECONDS._documentation
    (row,) = [
        line
        for line in (REPO / "docs" / "evictor.md").read_text().splitlines()
        if "`kvfs_evictor_journal_lag_seconds`" in line and line.startswith("|")
    ]
    assert "oldest record" in row
    assert "oldest_record" in (REPO / "evictor" / "ingest.py").read_text()


def test_no_rate_is_exported_as_a_gauge() -> None:
    gauges = [f.name for f in kvfs_families() if f.type == "gauge" and re.search(r"_per_second$", f.name)]
    assert gauges == []


METRIC_PREFIXES = (
    "kvfs_evictor_",
    "kvfs_connector_",
    "kvfs_journal_",
    "kvfs_gc_",
    "kvfs_namespace_",
    "kvfs_scan_",
    "kvfs_evicted_",
    "kvfs_recheck_",
    "kvfs_unlinks_",
    "kvfs_unsafe_",
    "kvfs_catalog_",
    "kvfs_policy_",
    "kvfs_verify_",
    "kvfs_dirs_",
    "kvfs_o_direct_",
    "kvfs_not_a_block",
    "kvfs_undecodable_",
)


def exported_sample_names() -> set[str]:
    names: set[str] = set()
    for f in kvfs_families():
        if f.type == "counter":
            names.add(f.name + "_total")
        elif f.type == "histogram":
            names |= {f.name, *(f.name + s for s in ("_bucket", "_sum", "_count"))}
        else:
            names.add(f.name)
    return names


def test_docs_name_only_metrics_kvfs_exports() -> None:
    # Renamed metrics (docs/evictor.md's deprecation table) are the only place old names may appear.
    exported = exported_sample_names()
    unknown = []
    for doc in ("README.md", "docs/runbook.md", "docs/evictor.md", "docs/deploy.md", "docs/connector.md"):
        text = (REPO / doc).read_text()
        if doc == "docs/evictor.md":
            start = text.index("### Renamed metrics")
            text = text[:start] + text[text.index("\n## ", start) :]
        for name in re.findall(r"`(kvfs_[a-z0-9_]+)", text):
            if name.startswith(METRIC_PREFIXES) and not name.endswith("_") and name not in exported:
                unknown.append((doc, name))
    assert unknown == []
