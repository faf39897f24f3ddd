"""The Grafana dashboard is well-formed and every metric it queries is one kvfs or vLLM really exports."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from manifest_render import MANIFESTS, rendered
from promql_checks import (
    grouping_labels,
    kvfs_exposed_names,
    kvfs_metric_labels,
    selected_metrics,
    type_errors,
)

DASHBOARD = MANIFESTS / "grafana" / "kvfs-dashboard.json"
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


@functools.cache
def vllm_metric_literals() -> frozenset[str]:
    """Every "vllm:..." string literal in the installed vLLM sources (read, not imported: importing is slow)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed (the vllm extra)")
    found: set[str] = set()
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("*.py"):
            found |= set(re.findall(r"[\"'](vllm:[a-z0-9_:]+)[\"']", path.read_text(errors="replace")))
    return frozenset(found)


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in d["templating"]["list"])
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_covers_kvfs_and_vllm_offload_metrics() -> None:
    used = {m for _, expr in queries() for m in selected_metrics(expr)}
    assert any(m.startswith("kvfs_evictor_") for m in used)
    assert any(m.startswith("kvfs_connector_") for m in used)
    assert any(m.startswith("vllm:kv_offload_") for m in used)


def unknown_kvfs_metrics(qs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    exposed = kvfs_exposed_names()
    return [
        (t, m) for t, expr in qs for m in selected_metrics(expr) if m.startswith("kvfs_") and m not in exposed
    ]


def unknown_vllm_metrics(qs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    literals = vllm_metric_literals()
    missing = []
    for title, expr in qs:
        for m in selected_metrics(expr):
            if not m.startswith("vllm:"):
                continue
            base = next((m[: -len(s)] for s in SUFFIXES if m.endswith(s) and m[: -len(s)] in literals), m)
            if base not in literals:
                missing.append((title, m))
    return missing


def test_every_kvfs_metric_queried_is_exported() -> None:
    assert unknown_kvfs_metrics(queries()) == []


@pytest.mark.vllm
def test_every_vllm_metric_queried_exists_in_vllm() -> None:
    assert unknown_vllm_metrics(queries()) == []


def test_metric_checks_catch_misspelt_metrics() -> None:
    bad = [("p", "rate(kvfs_evictor_evicted_byte_total[5m]) + kvfs_evictor_usage_bytes_total")]
    assert [m for _, m in unknown_kvfs_metrics(bad)] == [
        "kvfs_evictor_evicted_byte_total",
        "kvfs_evictor_usage_bytes_total",
    ]
    assert unknown_kvfs_metrics([("p", "kvfs_evictor_usage_bytes + kvfs_evicted_bytes_total")]) == []
    # Names main merged away (docs/evictor.md, "Renamed metrics") are unknown now.
    gone = "rate(kvfs_evictor_evicted_bytes_total[5m]) + kvfs_gc_unlink_failures_total + kvfs_evictor_orphans_known"
    assert len(unknown_kvfs_metrics([("p", gone)])) == 3


# Labels Prometheus attaches to every scraped sample (a query may group by them) and histograms' `le`.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "container", "service", "endpoint", "le"}


def unknown_grouping_labels(qs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`by (label)` over kvfs metrics where no selected kvfs metric has that label (nor is it a target label)."""
    known = kvfs_metric_labels()
    bad = []
    for title, expr in qs:
        for labels, metrics in grouping_labels(expr):
            kvfs = [m for m in metrics if m.startswith("kvfs_")]
            have = set().union(*(known.get(m, frozenset()) for m in kvfs))
            bad += [(title, label) for label in labels if kvfs and label not in have | TARGET_LABELS]
    return bad


def test_every_grouping_label_is_one_the_metric_has() -> None:
    assert unknown_grouping_labels(queries()) == []
    assert unknown_grouping_labels([("p", "sum by (why) (rate(kvfs_unlinks_total[5m]))")]) == [("p", "why")]


def test_per_namespace_panels_group_by_the_kvfs_namespace_label() -> None:
    # `namespace` is the Kubernetes namespace Prometheus attaches; kvfs' own is `kvfs_namespace`.
    per_ns = [
        (p["title"], t)
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
        if any(m.startswith("kvfs_namespace_") for m in selected_metrics(t["expr"]))
    ]
    assert per_ns
    for title, target in per_ns:
        assert grouping_labels(target["expr"])[0][0] == ["kvfs_namespace"], title
        assert target["legendFormat"] == "{{kvfs_namespace}}", title


def test_the_chart_ships_this_dashboard() -> None:
    chart_copy = MANIFESTS / "helm" / "kvfs-evictor" / "files" / "kvfs-dashboard.json"
    assert chart_copy.read_text() == DASHBOARD.read_text()


@pytest.mark.vllm
def test_vllm_metric_check_catches_misspelt_metrics() -> None:
    good = "rate(vllm:kv_offload_store_bytes_total[5m])"
    assert unknown_vllm_metrics([("p", good)]) == []
    assert unknown_vllm_metrics([("p", "rate(vllm:kv_offload_stored_bytes_total[5m])")])


def test_dashboard_jobs_match_the_scraped_services() -> None:
    # The Prometheus operator labels samples with job=<Service name>; the dashboard's defaults must match.
    services = {d["metadata"]["name"] for d in rendered("base") if d["kind"] == "Service"}
    defaults = {
        v["name"]: v["current"]["value"] for v in dashboard()["templating"]["list"] if v["type"] == "custom"
    }
    assert defaults["evictor_job"] in services and defaults["engine_job"] in services


def test_dashboard_ships_in_the_base_as_a_sidecar_configmap() -> None:
    (cm,) = [d for d in rendered("base") if d["metadata"]["name"] == "kvfs-grafana-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kvfs-dashboard.json"]) == dashboard()


def test_every_query_parses_and_rates_only_counters() -> None:
    problems = []
    for title, expr in queries():
        try:
            problems += [f"{title}: {e}" for e in type_errors(expr)]
        except ValueError as exc:
            problems.append(f"{title}: {exc}")
    assert problems == []


def test_promql_checks_catch_syntax_and_type_mistakes() -> None:
    with pytest.raises(ValueError):
        selected_metrics("sum by (reason (rate(kvfs_evictor_evicted_bytes_total[5m]))")
    assert type_errors("rate(kvfs_evictor_usage_bytes[5m])") == [
        "rate(kvfs_evictor_usage_bytes): not a counter"
    ]
    assert type_errors("histogram_quantile(0.9, sum by (le) (rate(kvfs_evictor_enforce_seconds_sum[5m])))")
    assert (
        type_errors("histogram_quantile(0.9, sum by (le) (rate(kvfs_evictor_enforce_seconds_bucket[5m])))")
        == []
    )
