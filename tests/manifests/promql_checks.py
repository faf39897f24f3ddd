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


@functools.cache
def kvfs_exposed_names() -> frozenset[str]:
    """Sample names the kvfs processes expose: the metrics modules' families, with Prometheus' suffixes."""
    import prometheus_client

    for module in ("kvfs.metrics", "evictor.metrics", "connector.metrics"):
        importlib.import_module(module)
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type in ("histogram", "summary"):
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return frozenset(n for n in names if n.startswith("kvfs_"))
