"""The connector's metrics helpers: hot-path increments count exactly what prometheus_client's own calls do."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from connector import metrics


def test_hot_inc_and_hot_set_change_the_exported_sample() -> None:
    registry = CollectorRegistry()
    counter = Counter("kvfs_test_hot_total", "test", ["outcome"], registry=registry)
    gauge = Gauge("kvfs_test_hot_gauge", "test", registry=registry)
    inc = metrics.hot_inc(counter.labels("ok"))
    inc(1)
    inc(2.5)
    counter.labels("ok").inc()  # the ordinary path adds to the same value
    metrics.hot_set(gauge)(7.0)
    assert registry.get_sample_value("kvfs_test_hot_total", {"outcome": "ok"}) == 4.5
    assert registry.get_sample_value("kvfs_test_hot_gauge") == 7.0


def test_hot_inc_falls_back_to_inc_without_a_value_object() -> None:
    class Plain:
        def __init__(self) -> None:
            self.total = 0.0

        def inc(self, amount: float = 1) -> None:
            self.total += amount

    plain = Plain()
    metrics.hot_inc(plain)(3)  # type: ignore[arg-type]
    assert plain.total == 3
