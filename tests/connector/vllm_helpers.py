"""Builders for vLLM-facing connector tests (real vLLM classes, no model from the hub)."""

from __future__ import annotations

import time

from connector.compat import offloading_config

__all__ = ["offloading_config", "poll"]


def poll(fn, timeout: float = 10.0, interval: float = 0.005):  # type: ignore[no-untyped-def]
    """Call `fn` until it returns something truthy (the scheduler would ask again next step)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
