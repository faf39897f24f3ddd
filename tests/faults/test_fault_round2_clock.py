"""Issue 20, item 6: the wall clock stepped back (NTP correction, VM restore) paused eviction for the length of
the step: the interval jobs (APScheduler) kept their next run as a wall time.  Passes must go on."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from evictor.service import EvictorService
from evictor.settings import load_settings
from evictor.ticker import Ticker

STEP_S = 3600.0


class _Clock:
    """The wall clock as every reader sees it: time.time() and datetime.now(), stepped back on demand."""

    offset = 0.0


def _stepped_clock(monkeypatch: pytest.MonkeyPatch) -> type[_Clock]:
    real_time = time.time

    def fake_time() -> float:
        return real_time() - _Clock.offset

    class SteppedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> SteppedDatetime:  # type: ignore[override]
            return dt.datetime.fromtimestamp(fake_time(), tz)  # type: ignore[return-value]

    monkeypatch.setattr(time, "time", fake_time)
    monkeypatch.setattr(dt, "datetime", SteppedDatetime)  # a wall-time scheduler reads datetime.now
    _Clock.offset = 0.0
    return _Clock


def test_passes_go_on_after_the_wall_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _stepped_clock(monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    settings = load_settings(
        {
            "root": str(root),
            "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
            "enforce_interval": "0.2s",
            "startup_scan": "false",
            "scan_interval": "0",
            "watch": "off",
            "metrics_port": "0",
            "metrics_host": "127.0.0.1",
        },
        environ={},
    )
    service = EvictorService(settings)
    passes: list[float] = []
    real_job = service._enforce_job

    def counting_job() -> None:
        passes.append(time.monotonic())
        real_job()

    service._enforce_job = counting_job  # type: ignore[method-assign]
    service.start()
    try:
        deadline = time.monotonic() + 30
        while len(passes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(passes) >= 3, "no passes before the step"
        clock.offset = STEP_S  # the wall clock jumps an hour back
        stepped = time.monotonic()
        time.sleep(2.0)
        after = [t for t in passes if t > stepped]
        # 0.2 s apart: about 10 in 2 s; a paused scheduler runs none for an hour.
        assert len(after) >= 5, f"{len(after)} passes in 2 s after the clock stepped back {STEP_S:.0f} s"
    finally:
        service.stop()


def test_ticker_runs_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _stepped_clock(monkeypatch)
    ticks: list[float] = []
    woken = threading.Event()
    ticker = Ticker()
    ticker.add_job(lambda: ticks.append(time.monotonic()), "tick", interval=0.05, run_now=True)
    ticker.add_job(woken.set, "manual")  # no interval: runs only when woken
    try:
        time.sleep(0.3)
        clock.offset = STEP_S
        stepped = time.monotonic()
        time.sleep(0.5)
        assert sum(t > stepped for t in ticks) >= 5
        assert not woken.is_set()
        ticker.run_soon("manual")
        assert woken.wait(5)
    finally:
        ticker.shutdown(wait=True, timeout=5)
    count = len(ticks)
    time.sleep(0.2)
    assert len(ticks) == count  # nothing runs after shutdown
