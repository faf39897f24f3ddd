"""PromQL helpers for the dashboard and alert tests: the metrics a query selects and its type mistakes (parsed, not
regexed), and the metric names kvfs really exports."""

from __future__ import annotations

import functools
import importlib
from typing import Any

import promql_parser

COUNTER_SAMPLES = ("_total", "_bucket", "_count", "_sum")
RATE_FUNCTIONS = {"rate", "irate", "increase"}


def _names_in(node: Any) -> list[str]:
    names: list[str] = []

    def visit(n: Any) -> None:
        if isinstance(n, promql_parser.VectorSelector) and n.name:
            names.append(n.name)

    promql_parser.walk(node, visit)
    return names


def selected_metrics(expr: str) -> list[str]:
    """Metric names the query selects, from the parsed PromQL (raises ValueError on a syntax error)."""
    return _names_in(promql_parser.parse(expr))


def type_errors(expr: str) -> list[str]:
    """rate()/increase() over something that is not a counter sample, histogram_quantile() without buckets."""
    errors: list[str] = []

    def visit(node: Any) -> None:
        if not isinstance(node, promql_parser.Call):
            return
        inner = [m for arg in node.args for m in _names_in(arg)]
        if node.func.name in RATE_FUNCTIONS:
            errors.extend(
                f"{node.func.name}({m}): not a counter" for m in inner if not m.endswith(COUNTER_SAMPLES)
            )
        if node.func.name == "histogram_quantile" and not any(m.endswith("_bucket") for m in inner):
            errors.append(f"histogram_quantile over {inner}: no _bucket series")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return errors


def grouping_labels(expr: str) -> list[tuple[list[str], list[str]]]:
    """(labels of `by (...)`, metrics aggregated) for every aggregation of the query."""
    found: list[tuple[list[str], list[str]]] = []

    def visit(node: Any) -> None:
        by = isinstance(node, promql_parser.AggregateExpr) and str(node.modifier or "").startswith("by")
        if by:
            found.append((list(node.modifier.labels), _names_in(node.expr)))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@functools.cache
def kvfs_metric_labels() -> dict[str, frozenset[str]]:
    """Sample name → the label names kvfs declares for it (`le` for buckets); from the definitions, so a gauge
    that has no child yet still has its labels."""
    import prometheus_client

    kvfs_exposed_names()
    registry = prometheus_client.REGISTRY
    labels: dict[str, frozenset[str]] = {}
    for collector, names in list(registry._collector_to_names.items()):  # noqa: SLF001 - no public accessor
        declared = frozenset(getattr(collector, "_labelnames", ()))
        for name in names:
            if name.startswith("kvfs_"):
                labels[name] = declared | ({"le"} if name.endswith("_bucket") else set())
    return labels


@functools.cache
def kvfs_exposed_names() -> frozenset[str]:
    """Sample names the kvfs processes expose: the metrics modules' families, with Prometheus' suffixes."""
    import prometheus_client

    for module in ("kvfs.metrics", "evictor.metrics", "connector.metrics"):
        importlib.import_module(module)
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")  # no `_created`: evictor/http.py disables those series
        elif family.type in ("histogram", "summary"):
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return frozenset(n for n in names if n.startswith("kvfs_"))
