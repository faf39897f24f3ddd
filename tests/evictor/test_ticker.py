"""The evictor's job runner (evictor/ticker.py): a failing job keeps its schedule, woken jobs run, runs missed
during a long one are coalesced, and shutdown stops every job (its monotonic clock is tested with the wall
clock stepped back in tests/faults/test_fault_round2_clock.py)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from evictor.ticker import Ticker


def _wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_job_that_raises_is_logged_and_keeps_its_schedule(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []

    def failing() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("catalog gone")

    ticker = Ticker()
    with caplog.at_level(logging.ERROR, logger="kvfs.evictor"):
        ticker.add_job(failing, "enforce", interval=0.05, run_now=True)
        try:
            assert _wait_for(lambda: len(runs) >= 3), "a failing job stopped its schedule"
        finally:
            ticker.shutdown()
    assert "job enforce failed" in caplog.text and "catalog gone" in caplog.text


def test_a_job_without_interval_runs_only_when_woken() -> None:
    runs: list[int] = []
    ticker = Ticker()
    ticker.add_job(lambda: runs.append(1), "scan")
    try:
        time.sleep(0.2)
        assert runs == []
        ticker.run_soon("scan")
        assert _wait_for(lambda: runs == [1])
        ticker.run_soon("no-such-job")  # a no-op, not an error
    finally:
        ticker.shutdown()
    with pytest.raises(ValueError, match="exists"):
        ticker.add_job(lambda: None, "scan")


def test_runs_missed_during_a_long_run_are_coalesced_into_one() -> None:
    release = threading.Event()
    runs: list[float] = []

    def long_first_run() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            release.wait(5.0)  # ten intervals pass meanwhile

    ticker = Ticker()
    ticker.add_job(long_first_run, "enforce", interval=0.05, run_now=True)
    try:
        time.sleep(0.5)
        assert len(runs) == 1  # one instance at a time
        release.set()
        assert _wait_for(lambda: len(runs) >= 2)
        time.sleep(0.06)
        # The missed runs are one run at once, then the interval again: not ten runs in a burst.
        assert len(runs) <= 4, runs
    finally:
        ticker.shutdown()


def test_shutdown_stops_every_job_and_waits_for_them() -> None:
    runs: list[str] = []
    ticker = Ticker()
    ticker.add_job(lambda: runs.append("a"), "a", interval=0.02, run_now=True)
    ticker.add_job(lambda: runs.append("b"), "b")
    assert _wait_for(lambda: "a" in runs)
    ticker.shutdown(timeout=5.0)
    count = len(runs)
    time.sleep(0.1)
    assert len(runs) == count and "b" not in runs
    assert not any(job.thread is not None and job.thread.is_alive() for job in ticker._jobs.values())
