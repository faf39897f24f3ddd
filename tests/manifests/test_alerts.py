"""Alert rules: the plain rules file and the PrometheusRule agree, every expression parses, every metric exists,
every alert has a severity and a runbook section, and the issue's conditions are all covered."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from manifest_render import MANIFESTS, REPO, rendered
from promql_checks import grouping_labels, kvfs_exposed_names, selected_metrics, type_errors

RULES = MANIFESTS / "alerts" / "rules.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
# Where the shipped rules say docs/runbook.md is published (the chart's prometheusRule.runbookBaseUrl replaces it).
RUNBOOK_BASE = "https://kvfs.example/docs/runbook.md"
# Metrics that are not kvfs's: Prometheus' own scrape health and kube-state-metrics' CronJob status.
EXTERNAL = {"up", "kube_cronjob_status_last_successful_time"}


def groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> list[dict[str, Any]]:
    return [r for g in groups() for r in g["rules"]]


def problems(rules: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a list of alert rules (empty when nothing is)."""
    out = []
    exported = kvfs_exposed_names()
    anchors = {h.strip().lower() for h in re.findall(r"^## (\S+)", RUNBOOK.read_text(), re.M)}
    for rule in rules:
        name = rule.get("alert", "?")
        try:
            names = selected_metrics(rule["expr"])
            out += [f"{name}: {e}" for e in type_errors(rule["expr"])]
        except ValueError as exc:
            out.append(f"{name}: does not parse: {exc}")
            continue
        out += [f"{name}: unknown metric {m}" for m in names if m not in exported and m not in EXTERNAL]
        if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
            out.append(f"{name}: no severity")
        url = rule.get("annotations", {}).get("runbook_url", "")
        if not url.startswith(RUNBOOK_BASE + "#") or url.split("#", 1)[1] not in anchors:
            out.append(f"{name}: runbook_url {url!r} is not an absolute link to a section of docs/runbook.md")
    return out


def test_prometheusrule_carries_exactly_the_rules_file() -> None:
    (rule,) = [d for d in rendered("base") if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == groups()
    assert rule["metadata"]["namespace"] == "kvfs"


def test_every_alert_parses_uses_real_metrics_and_has_a_runbook() -> None:
    assert problems(alerts()) == []
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))


def test_the_issues_conditions_are_covered() -> None:
    used = {a["alert"]: set(selected_metrics(a["expr"])) for a in alerts()}
    covered = set().union(*used.values())
    for metric in (
        "kvfs_evictor_over_high_watermark",  # usage over the high watermark
        "kvfs_evictor_leader",  # no leader, or more than one
        "kvfs_evictor_ready",  # not ready
        "kvfs_evictor_journal_backlog_bytes",  # journal backlog
        "kvfs_evictor_journal_lag_seconds",  # ingest lag
        "kvfs_evictor_scan_last_timestamp_seconds",  # scan stale
        "kvfs_connector_loads_total",  # load-miss ratio
        "kvfs_connector_stores_dropped_total",  # store drops
        "kvfs_evictor_errors_total",  # eviction errors
        "kube_cronjob_status_last_successful_time",  # gc CronJob not succeeding
        "kvfs_evictor_pass_stalled",  # passes that cannot do what is due
        "kvfs_evictor_last_pass_success_timestamp_seconds",  # no successful pass
    ):
        assert metric in covered, metric
    leader = [a["expr"] for a in alerts() if "kvfs_evictor_leader" in used[a["alert"]]]
    assert any("== 0" in e for e in leader) and any("> 1" in e for e in leader)


def test_selectors_name_the_shipped_service_and_cronjobs() -> None:
    services = {d["metadata"]["name"] for d in rendered("base") if d["kind"] == "Service"}
    cronjobs = {d["metadata"]["name"] for d in rendered("gc-cronjob") if d["kind"] == "CronJob"}
    text = RULES.read_text()
    assert set(re.findall(r'(?<![a-z_])job="([^"]+)"', text)) <= services
    assert set(re.findall(r'cronjob="([^"]+)"', text)) == cronjobs


def test_every_alert_has_a_duration_or_fires_on_an_increase() -> None:
    for rule in alerts():
        assert "for" in rule or "increase(" in rule["expr"], rule["alert"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"expr": "max(kvfs_evictor_over_high_watermrk) == 1"},
            "unknown metric kvfs_evictor_over_high_watermrk",
        ),
        ({"expr": "max(kvfs_evictor_leader"}, "does not parse"),
        ({"expr": "rate(kvfs_evictor_usage_bytes[5m]) > 0"}, "not a counter"),
        ({"labels": {}}, "no severity"),
        ({"annotations": {"runbook_url": RUNBOOK_BASE + "#nosuchalert"}}, "not an absolute link"),
        ({"annotations": {"runbook_url": "docs/runbook.md#kvfsevictornoleader"}}, "not an absolute link"),
    ],
)
def test_the_checks_catch_broken_rules(change: dict[str, Any], expected: str) -> None:
    rule = {**alerts()[0], **change}
    assert any(expected in p for p in problems([rule]))


def rule(name: str) -> dict[str, Any]:
    (found,) = [a for a in alerts() if a["alert"] == name]
    return found


def test_no_leader_also_fires_when_no_evictor_is_scraped() -> None:
    # `sum(...) == 0` is empty when the series are gone (pods crash-looping, target deleted): absent() covers it.
    assert 'absent(kvfs_evictor_leader{job="kvfs-evictor"})' in rule("KvfsEvictorNoLeader")["expr"]


def test_engine_alerts_aggregate_per_fleet() -> None:
    # Engines of different namespaces (or Services) are different fleets: one bad fleet must not hide in the
    # sum of all, and the alert must say which.
    (engines,) = [g for g in groups() if g["name"] == "kvfs-engines"]
    for a in engines["rules"]:
        aggregations = grouping_labels(a["expr"])
        assert aggregations, a["alert"]
        for labels, _ in aggregations:
            assert {"namespace", "job"} <= set(labels), a["alert"]
        assert "{{ $labels.namespace }}" in a["annotations"]["summary"], a["alert"]


def test_stalled_and_no_success_alerts() -> None:
    stalled = rule("KvfsEvictionStalled")
    assert stalled["expr"] == 'max by (cause) (kvfs_evictor_pass_stalled{job="kvfs-evictor"}) > 0'
    assert stalled["for"] == "1m" and "{{ $labels.cause }}" in stalled["annotations"]["summary"]
    no_success = rule("KvfsEvictionNoSuccess")
    assert set(selected_metrics(no_success["expr"])) == {
        "kvfs_evictor_last_pass_success_timestamp_seconds",
        "kvfs_evictor_leader",
    }
    assert "> 300" in no_success["expr"] and "== 1" in no_success["expr"]  # the leader's, over 5 minutes


def test_runbook_documents_the_base_url_and_every_stall_cause() -> None:
    text = RUNBOOK.read_text()
    assert RUNBOOK_BASE in text and "runbookBaseUrl" in text
    section = text.split("## KvfsEvictionStalled", 1)[1].split("\n## ", 1)[0]
    for cause in ("unknown_namespace", "protected_by_min_age", "deletes_failing", "catalog_errors"):
        assert f"`{cause}`" in section, cause


def test_the_gc_cronjob_overlay_ships_no_evictor_alerts() -> None:
    # It has no evictor: KvfsEvictorNoLeader's absent() would fire forever.
    (rule_obj,) = [d for d in rendered("gc-cronjob") if d["kind"] == "PrometheusRule"]
    names = [g["name"] for g in rule_obj["spec"]["groups"]]
    assert "kvfs-evictor" not in names and {"kvfs-engines", "kvfs-gc-cronjob"} <= set(names)
