"""GraphCache's contract without a GPU: phases without a key always run eagerly, and a capture that fails turns
the cache off, is counted, and still runs the phase exactly once (graphs are a speed-up, never a requirement).
Capture and replay themselves are checked on a GPU by `python -m tools.datapath.gpu_check`."""

from __future__ import annotations

import pytest
import torch

from connector import metrics
from connector.graphs import GraphCache


def _failed_captures() -> float:
    return metrics.GRAPH_CAPTURE_FAILED._value.get()  # type: ignore[attr-defined]


def test_unkeyed_phases_run_eagerly_every_time() -> None:
    cache, calls = GraphCache(enabled=True), []
    for _ in range(3):
        cache.run(None, lambda: calls.append(1))
    assert calls == [1, 1, 1] and len(cache) == 0 and cache.enabled


def test_a_failed_capture_disables_the_cache_and_runs_the_phase_once() -> None:
    cache, calls = GraphCache(enabled=True), []
    before = _failed_captures()
    cache.run(("load", 1), lambda: calls.append("first"))  # first sight of a shape: eager, no capture
    assert calls == ["first"] and cache.enabled and _failed_captures() == before
    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU; gpu_check covers capture there
        pytest.skip(
            "on a GPU the capture succeeds: python -m tools.datapath.gpu_check checks capture and replay"
        )
    cache.run(("load", 1), lambda: calls.append("second"))  # second sight: capture tried, fails on CPU
    assert calls == ["first", "second"], "the phase must run exactly once even though its capture failed"
    assert not cache.enabled and len(cache) == 0
    assert _failed_captures() == before + 1
    cache.run(("load", 1), lambda: calls.append("third"))  # off from then on: eager, no new failure counted
    assert calls[-1] == "third" and _failed_captures() == before + 1


def test_shapes_beyond_the_limit_run_eagerly() -> None:
    cache, calls = GraphCache(enabled=True, limit=0), []
    for i in range(4):
        cache.run(("store", 1), lambda i=i: calls.append(i))
    assert calls == [0, 1, 2, 3] and cache.enabled and len(cache) == 0


def test_a_disabled_cache_never_tries_to_capture() -> None:
    cache, calls = GraphCache(enabled=False), []
    before = _failed_captures()
    for i in range(3):
        cache.run(("scatter", 7), lambda i=i: calls.append(i))
    assert calls == [0, 1, 2] and _failed_captures() == before


def test_run_says_whether_the_call_was_steady_state() -> None:
    """A shape's first run (kernels compile) is not steady state, nor its capture; later runs are (the store
    bandwidth estimate takes only those as samples)."""
    off, calls = GraphCache(enabled=False), []
    assert [off.run(("store", 1), lambda: calls.append(1)) for _ in range(3)] == [False, True, True]
    assert off.run(("store", 2), lambda: calls.append(2)) is False  # another shape: its own first run
    assert off.run(None, lambda: calls.append(3)) is True  # unkeyed: unknown, taken as steady
    full = GraphCache(enabled=True, limit=0)
    assert [full.run(("load", 1), lambda: calls.append(4)) for _ in range(2)] == [False, True]
    if not torch.cuda.is_available():  # a capture tried on CPU fails: that call is no steady state either
        on = GraphCache(enabled=True)
        assert [on.run(("load", 1), lambda: calls.append(5)) for _ in range(3)] == [False, False, True]
