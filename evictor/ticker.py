"""Periodic jobs timed by the monotonic clock, one thread each.

The wall clock may step (an NTP correction, a VM restored from a snapshot): a scheduler that keeps its next run
as a wall time (APScheduler's interval trigger) then waits for the length of a backward step, and eviction stops
for as long.  Here every wait is `Event.wait` on a deadline of `time.monotonic()`, which never steps.

Each job runs at most one instance at a time, in its own thread (a long scan never delays a capacity pass);
runs missed while the previous one was running are coalesced into one.  `run_soon` wakes a job now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("kvfs.evictor")


@dataclass(slots=True)
class _Job:
    name: str
    func: Callable[[], None]
    interval: float | None  # None: runs only when woken (and at start, if `run_now`)
    due: float | None  # monotonic deadline of the next run; None: none planned
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Ticker:
    """A few named jobs, each `interval` seconds apart by the monotonic clock; `shutdown` stops them all."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._stop = threading.Event()

    def add_job(
        self, func: Callable[[], None], name: str, *, interval: float | None = None, run_now: bool = False
    ) -> None:
        """Start job `name`: first run now (`run_now`) or after `interval`; then every `interval` seconds."""
        if name in self._jobs:
            raise ValueError(f"job {name!r} exists")
        now = time.monotonic()
        due = now if run_now else (now + interval if interval else None)
        job = _Job(name, func, interval, due)
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"evictor-{name}", daemon=True)
        self._jobs[name] = job
        job.thread.start()

    def run_soon(self, name: str) -> None:
        """Run job `name` as soon as its current run (if any) ends; no-op for an unknown job or after shutdown."""
        job = self._jobs.get(name)
        if job is not None:
            job.wake.set()

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        self._stop.set()
        for job in self._jobs.values():
            job.wake.set()
        if wait:
            for job in self._jobs.values():
                if job.thread is not None and job.thread is not threading.current_thread():
                    job.thread.join(timeout)

    def _run(self, job: _Job) -> None:
        while not self._stop.is_set():
            if job.due is None:
                job.wake.wait()
            else:
                job.wake.wait(max(0.0, job.due - time.monotonic()))
            if self._stop.is_set():
                return
            woken = job.wake.is_set()
            job.wake.clear()
            if not woken and (job.due is None or time.monotonic() < job.due):
                continue  # a spurious return: wait the rest
            started = time.monotonic()
            try:
                job.func()
            except Exception:  # noqa: BLE001 - a job failing once must not end its schedule
                log.exception("job %s failed", job.name)
            # Fixed rate from the run's start, coalesced: after a run longer than the interval, the next is now.
            job.due = None if job.interval is None else max(started + job.interval, time.monotonic())
