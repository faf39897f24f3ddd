"""The `kvfs-evictor` service: wires settings, catalog, leader election, feeds, enforcement and HTTP together.

Threads: the HTTP server; a leadership loop (PostgreSQL followers retry the lock); a journal-ingest loop woken by
the journal watcher or the fallback timer; ticker jobs on the monotonic clock (`evictor/ticker.py`) for
enforcement and reconciliation scans; the watchdog observers.  Only the leader ingests, watches, scans and enforces: followers write nothing (so journal
records are never applied twice) and stay ready to take over.  Catalog failures put the service in a
not-ready state and every catalog user backs off (0.5 s doubling to 30 s) until a probe succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evictor import metrics
from evictor.http import StatusServer
from evictor.ingest import JournalIngester
from evictor.leader import AlreadyRunningError, FileLockElector, LeaderElector, make_elector
from evictor.passes import PassReport, PassRunner
from evictor.settings import Settings
from evictor.ticker import Ticker
from evictor.watch import TempFileTracker, TreeFeed, Watchers, journal_grace
from kvfs.catalog.engine import redact_url

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

log = logging.getLogger("kvfs.evictor")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3
# Health fails when the leader's passes have made no progress for this long (or 10 enforce intervals).
STALL_AFTER_S = 120.0


def _first_line(exc: BaseException) -> str:
    text = redact_url(str(exc).strip())
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def is_catalog_error(exc: BaseException) -> bool:
    from kvfs.catalog import CatalogError  # CatalogUnavailable: every failed statement, whatever the driver

    return isinstance(exc, CatalogError | ConnectionError)


class StartupError(RuntimeError):
    """Settings that cannot work; the service exits with EXIT_CONFIG."""


class Backoff:
    """Catalog outage state: not ready, and nobody touches the catalog until `retry_at`."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = 0.0
        self.retry_at = 0.0
        self.failing_since: float | None = None
        self.last_error = ""
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        # Counted here, once per failed attempt, whoever met the outage: the election alone may see it (and then
        # holds ingest off until `retry_at`), and an outage must never show in /readyz without the counter.
        metrics.ERRORS.labels("catalog").inc()
        with self._lock:
            self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
            self.retry_at = time.monotonic() + self.delay
            if self.failing_since is None:
                self.failing_since = time.time()
                log.warning("catalog unreachable, retrying with backoff: %s", _first_line(exc))
            self.last_error = _first_line(exc)

    def succeeded(self) -> None:
        with self._lock:
            if self.failing_since is not None:
                log.info("catalog reachable again after %.1fs", time.time() - self.failing_since)
            self.delay, self.retry_at, self.failing_since, self.last_error = 0.0, 0.0, None, ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def wait_needed(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())


class EvictorService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.root)
        self.stopping = threading.Event()
        self.started = time.time()
        self.backoff = Backoff()
        self.catalog: Catalog | None = None
        self.elector: LeaderElector | None = None
        self.temp_files = TempFileTracker()
        self.http: StatusServer | None = None
        self.scheduler: Ticker | None = None
        self.ingester: JournalIngester | None = None
        self.tree: TreeFeed | None = None
        self.passes: PassRunner | None = None
        self.watchers: Watchers | None = None
        self._journal_wakeup = threading.Event()
        self._duty_lock = threading.Lock()  # leadership transitions
        self._leading = False
        self._last_pass_end = (
            time.monotonic()
        )  # a pass (of any outcome) ended, or leadership / the scan began
        self._first_pass = threading.Event()  # set after the first enforcement attempt of a leadership term
        self.initial_scan_done = False
        self.last_scan: dict[str, Any] | None = None
        self.first_pass_at: float | None = None
        self.scans_done = 0
        self._threads: list[threading.Thread] = []
        self.fatal: str | None = None  # a configuration error found after start-up: the process exits
        # Read at scrape time, so /metrics and /readyz never disagree.
        metrics.READY.set_function(lambda: 1.0 if self._ready()[0] else 0.0)

    # ---- start / stop --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Everything but the wait; raises AlreadyRunningError for a held SQLite catalog, StartupError for
        settings that cannot work (bad catalog URL, missing root, SQLite catalog refused)."""
        from kvfs.catalog import CatalogError
        from kvfs.catalog.engine import check_sqlite_location

        try:
            self.elector = make_elector(self.settings.catalog, lease_s=self.settings.leader_lease)
        except CatalogError as exc:
            raise StartupError(str(exc)) from None
        if not self.root.is_dir():
            raise StartupError(f"root {self.root} is not a directory")
        if isinstance(self.elector, FileLockElector):
            # Refuse a catalog under the root before its lock file is created there.
            try:
                check_sqlite_location(str(self.elector.db_path), self.root)
            except CatalogError as exc:
                raise StartupError(str(exc)) from None
            self.elector.try_acquire()  # refuse to start before opening anything
            # A local file: an error opening it is a configuration problem (on the mount, unwritable, newer
            # schema), not an outage to wait out.
            if not self._open_catalog():
                raise StartupError(self.fatal or f"cannot open the catalog: {self.backoff.last_error}")
        self.http = StatusServer(
            self.settings.metrics_host,
            self.settings.metrics_port,
            health=self.health,
            ready=self.ready,
            status=self.status,
        )
        self.http.start()
        log.info(
            "kvfs-evictor starting: root %s, catalog %s, http :%d%s",
            self.root,
            redact_url(self.settings.catalog),
            self.http.port,
            ", DRY RUN" if self.settings.dry_run else "",
        )
        self._spawn(self._leadership_loop, "evictor-leader")
        self._spawn(self._journal_loop, "evictor-journal")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _open_catalog(self) -> bool:
        """Open (create/upgrade) the catalog, honouring the backoff; True once open."""
        if self.catalog is not None:
            return True
        if self.backoff.wait_needed() > 0:
            return False
        from kvfs.catalog import Catalog, RootMismatchError

        try:
            self.catalog = Catalog.open(self.settings.catalog, root=self.root)
        except RootMismatchError as exc:
            # Not an outage: waiting cannot fix it, and running would drop another root's rows.
            log.error("cannot start: %s", exc)
            self.fatal = str(exc)
            self.stopping.set()
            return False
        except Exception as exc:  # noqa: BLE001 - CatalogError or a driver error: retried with backoff
            self.backoff.failed(exc)
            return False
        self.backoff.succeeded()
        self.ingester = JournalIngester(self.root, self.catalog)
        self.ingester.ensure_dir()
        self.tree = TreeFeed(
            self.root, self.catalog, self.temp_files, journal_grace(self.settings.journal_interval)
        )
        self.passes = PassRunner(
            self.settings,
            self.catalog,
            ingest=self._ingest_now,
            temp_files=self.temp_files.snapshot,
            forget_temp_files=self.temp_files.discard,
            still_leader=self.elector.still_leader,
            stopping=self.stopping,
        )
        log.info("catalog open: %s", redact_url(self.settings.catalog))
        return True

    def stop(self, *, exiting: bool = False) -> None:
        """`exiting`: the process ends next, so watches are left to the kernel (see `Watchers.stop`)."""
        self.stopping.set()
        self._journal_wakeup.set()
        log.info("stopping")
        self._step_down(exiting=exiting)
        if self.scheduler is not None:
            # Jobs see `stopping` (a paused or deleting pass drops its remaining batches) and end quickly.
            done = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)
            done.start()
            done.join(timeout=5)
        with contextlib.suppress(Exception):  # the session ends with the process anyway
            self.elector.release()
        if self.catalog is not None:
            with contextlib.suppress(Exception):
                self.catalog.close()
        if self.http is not None:
            self.http.stop()
        log.info("stopped")

    def wait(self) -> None:
        while not self.stopping.wait(1.0):
            pass

    # ---- leadership -----------------------------------------------------------------------------------------
    def _leadership_loop(self) -> None:
        while not self.stopping.is_set():
            if self._open_catalog():
                try:
                    leader = self.elector.try_acquire()
                except Exception as exc:  # noqa: BLE001
                    metrics.ERRORS.labels("leader").inc()
                    log.warning("leader election failed: %s", _first_line(exc))
                    leader = False
                if self.elector.last_error:
                    # Followers touch the catalog only here: an outage must show in /readyz for them too.
                    self.backoff.failed(ConnectionError(self.elector.last_error))
                elif not self._leading and self.backoff.failing:
                    self.backoff.succeeded()
                if leader and not self._leading:
                    self._take_duties()
                elif not leader and self._leading:
                    self._step_down()
            self.stopping.wait(self.settings.leader_retry)

    def _take_duties(self) -> None:
        with self._duty_lock:
            if self._leading or self.stopping.is_set():
                return
            log.info("leader: ingesting journals, watching (%s) and enforcing", self.settings.watch)
            self._leading = True
            self._last_pass_end = time.monotonic()
            self.initial_scan_done = not self.settings.startup_scan
            assert self.ingester is not None and self.tree is not None
            self.watchers = Watchers(
                self.settings.watch,
                self.settings.watch_poll_interval,
                self.root,
                self.ingester.ensure_dir(),
                self._journal_wakeup.set,
                self.tree,
                self._tree_events_lost,
            )
            try:
                self.watchers.start_journal()
            except OSError as exc:  # e.g. inotify instance limit: the 1 s timer still ingests
                metrics.ERRORS.labels("watch").inc()
                log.error("cannot watch the journal folder (%s); ingesting on the timer", exc)
            # The tree watch waits for the first enforcement pass: on a big tree adding its watches takes longer
            # than the scan and the pass together, and would compete with them for the CPU.
            self._first_pass = threading.Event()
            if self.settings.watch != "off":
                self._spawn_once(self._watch_tree, (self.watchers, self._first_pass), "evictor-tree-watch")
            # Timed by the monotonic clock: a wall clock stepped back must not pause eviction (evictor.ticker).
            sched = Ticker()
            sched.add_job(
                self._scan_job,
                "scan",
                interval=self.settings.scan_interval or None,
                run_now=self.settings.startup_scan,
            )
            sched.add_job(self._enforce_job, "enforce", interval=self.settings.enforce_interval, run_now=True)
            self.scheduler = sched
            self._journal_wakeup.set()

    def _watch_tree(self, watchers: Watchers, first_pass: threading.Event) -> None:
        """Background: once the first pass has run, add the tree watch, then scan once more.  The scan closes the
        gap: a file written after the start-up scan walked its directory and before that directory was watched
        is in no event, but it is on disk."""
        while not first_pass.wait(0.5):
            if self.stopping.is_set() or self.watchers is not watchers:
                return
        try:
            if not watchers.start_tree():
                return
        except OSError as exc:  # e.g. the inotify watch limit: scans (hourly) still find stock files
            metrics.ERRORS.labels("watch").inc()
            log.error(
                "cannot watch the tree (%s): %s; stock .bin files are found by scans only",
                self.settings.watch,
                exc,
            )
            return
        sched = self.scheduler
        if sched is not None and self.watchers is watchers and self.settings.startup_scan:
            sched.run_soon("scan")  # a scheduler shut down meanwhile (a step-down) ignores it

    def _tree_events_lost(self) -> None:
        """The tree watcher lost events (inotify queue overflow): only a scan finds what they reported, and it
        runs whatever `startup_scan` and `scan_interval` say, or usage stays undercounted for up to an hour."""
        sched = self.scheduler
        if sched is not None:
            sched.run_soon("scan")

    def _spawn_once(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        """A thread that may end (unlike `_spawn`'s, which /healthz expects alive)."""
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    def _step_down(self, *, exiting: bool = False) -> None:
        with self._duty_lock:
            if not self._leading:
                return
            self._leading = False
            log.info("stepping down: watchers and enforcement stopped")
            if self.watchers is not None:
                self.watchers.stop(exiting=exiting)
                self.watchers = None
            sched, self.scheduler = self.scheduler, None
        if sched is not None and not self.stopping.is_set():
            sched.shutdown(wait=False)
        elif sched is not None:
            self.scheduler = sched  # stop() waits for it

    # ---- feeds ----------------------------------------------------------------------------------------------
    def _ingest_now(self) -> None:
        """Journals and tree events into the catalog now (raises on catalog errors)."""
        assert self.ingester is not None and self.tree is not None
        self.ingester.ingest()
        self.tree.apply()

    def _journal_loop(self) -> None:
        """Ingest as soon as the watcher fires (debounced) or every journal_interval."""
        while not self.stopping.is_set():
            self._journal_wakeup.wait(self.settings.journal_interval)
            self._journal_wakeup.clear()
            if self.stopping.is_set():
                break
            if not self._leading or self.catalog is None:
                continue
            wait = self.backoff.wait_needed()
            if wait > 0:
                self.stopping.wait(wait)
                continue
            try:
                self._ingest_now()
                self.backoff.succeeded()
            except Exception as exc:  # noqa: BLE001
                self._failed("journal", exc)
            # Debounce: every writer flushes about twice a second; many writers must not mean a transaction each.
            self.stopping.wait(min(0.25, self.settings.journal_interval))

    def _failed(self, kind: str, exc: BaseException) -> None:
        if is_catalog_error(exc):
            self.backoff.failed(exc)
        else:
            metrics.ERRORS.labels(kind).inc()
            log.exception("%s failed: %s", kind, _first_line(exc))

    def _scan_job(self) -> None:
        if not self._leading or self.stopping.is_set() or self.catalog is None:
            return
        if self.backoff.wait_needed() > 0:
            return
        from kvfs.scan import scan_tree
        from kvfs.scanstate import record_scan

        started = time.time()
        try:
            # Journals first: the scan keeps journaled recency, so rows it creates itself are only the
            # files no journal describes.
            self._ingest_now()
            result = scan_tree(self.root, self.catalog)
        except Exception as exc:  # noqa: BLE001
            metrics.SCANS.labels("failed").inc()
            self._failed("scan", exc)
            return
        self.temp_files.replace_all(list(result.temp_files))
        try:
            record_scan(self.catalog, result)  # `kvfs du` reports temp files from the last scan
        except Exception as exc:  # noqa: BLE001 - the figure is informational; the scan itself succeeded
            log.warning("could not record the scan's temp-file summary: %s", exc)
        metrics.SCANS.labels("ok").inc()
        metrics.METADATA_OPS.labels("scan").inc(result.files + result.not_blocks + len(result.temp_files))
        metrics.SCAN_LAST_TIME.set(time.time())
        self.last_scan = {
            "started": started,
            "duration_s": round(result.duration_s, 3),
            "files": result.files,
            "bytes": result.bytes,
            "blocks_added": result.blocks_added,
            "blocks_removed": result.blocks_removed,
            "not_blocks": result.not_blocks,
            "temp_files": len(result.temp_files),
        }
        log.info(
            "scan: %d block files (%d added, %d removed from the catalog), %d not blocks, %d temp files in %.2fs",
            result.files,
            result.blocks_added,
            result.blocks_removed,
            result.not_blocks,
            len(result.temp_files),
            result.duration_s,
        )
        self.scans_done += 1
        if not self.initial_scan_done:
            self.initial_scan_done = True
            self._last_pass_end = time.monotonic()
            sched = self.scheduler
            if sched is not None:  # enforce now, not at the next tick of the interval
                sched.run_soon("enforce")

    def _enforce_job(self) -> None:
        if not self._leading or self.stopping.is_set() or self.passes is None:
            return
        # The lease is renewed here, by the loop whose liveness it stands for (and before each delete batch).
        if self.elector is not None and not self.elector.still_leader():
            log.warning("leadership lost: enforcement pass skipped")
            return
        if not self.initial_scan_done:
            return  # capacity decisions on a half-known tree would pick the wrong victims
        if self.backoff.wait_needed() > 0:
            return
        try:
            report = self.passes.run_pass()
            self.backoff.succeeded()
        except Exception as exc:  # noqa: BLE001
            metrics.ENFORCE_PASSES.labels("failed").inc()
            self._failed("enforce", exc)
            return
        finally:
            self._last_pass_end = time.monotonic()
            self._first_pass.set()
        if self.first_pass_at is None:
            self.first_pass_at = time.time()
            log.info("first enforcement pass done %.2fs after start", self.first_pass_at - self.started)
        try:
            self.passes.reclaim_dirs(report)
        except OSError as exc:
            metrics.ERRORS.labels("delete").inc()
            log.warning("could not remove emptied directories: %s", exc)
        metrics.ENFORCE_PASSES.labels(report.outcome).inc()

    # ---- probes and status ----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead:
            return False, f"threads died: {', '.join(dead)}"
        stalled = self._passes_stopped()
        if stalled:
            return False, stalled
        return True, "ok"

    def _passes_stopped(self) -> str | None:
        """Why the leader's passes stopped (a pass stuck in one step, or no pass at all for a while), or None.
        A catalog outage is readiness's to report; passes that run but cannot evict are `kvfs_evictor_pass_stalled`."""
        if self.passes is None or not self._leading or self.backoff.failing:
            return None
        now = time.monotonic()
        stuck_for = now - self.passes.progress_at
        if self.passes.phase != "idle" and stuck_for > max(
            STALL_AFTER_S, 2 * self.settings.pause_before_delete
        ):
            return f"eviction pass stuck in {self.passes.phase} for {stuck_for:.0f}s"
        quiet_for = now - self._last_pass_end
        if self.initial_scan_done and quiet_for > max(STALL_AFTER_S, 10 * self.settings.enforce_interval):
            return f"no eviction pass for {quiet_for:.0f}s"
        return None

    def ready(self) -> tuple[bool, str]:
        return self._ready()

    def _ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        if self.catalog is None:
            return False, f"catalog not open: {self.backoff.last_error or 'connecting'}"
        if self.backoff.failing:
            return False, f"catalog unreachable: {self.backoff.last_error}"
        return True, "leader" if self._leading else "follower"

    def status(self) -> dict[str, Any]:
        ready, why = self.ready()
        s = self.settings
        last: PassReport | None = self.passes.last if self.passes else None
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "started": self.started,
            "root": str(self.root),
            "catalog": redact_url(s.catalog),
            "ready": ready,
            "ready_reason": why,
            "leader": self._leading,
            "election": self.elector.describe(),
            "dry_run": s.dry_run,
            "policy": s.policy,
            "watch": s.watch,
            "watermarks": {
                "high_pct": s.high_watermark,
                "low_pct": s.low_watermark,
                "max_bytes": s.max_bytes,
            },
            "limits": {
                "ttl_s": s.ttl,
                "quotas": s.quotas,
                "retire": list(s.retire),
                "min_age_s": s.min_age,
                "orphan_grace_s": s.orphan_grace,
            },
            "initial_scan_done": self.initial_scan_done,
            "last_scan": self.last_scan,
            "scans_done": self.scans_done,
            "first_pass_at": self.first_pass_at,
            "tree_watch": {
                "state": self.watchers.tree_state if self.watchers else "stopped",
                "setup_s": self.watchers.tree_setup_s if self.watchers else None,
            },
            "phase": self.passes.phase if self.passes else "starting",
            "paused_batches": self.passes.paused_batches if self.passes else 0,
            "last_pass": last.to_json() if last else None,
            "usage": None,
            "journal": None,
            "temp_files_known": len(self.temp_files.snapshot()),
        }
        if last is not None:
            cap = last.capacity
            out["usage"] = {
                "used_bytes": cap.used,
                "capacity_bytes": cap.capacity,
                "ratio": round(cap.ratio, 4),
                "source": cap.source,
                "catalog_bytes": cap.catalog_bytes,
                "catalog_files": cap.catalog_files,
                "namespaces": [
                    {"namespace": n.namespace, "files": n.files, "bytes": n.bytes} for n in cap.namespaces
                ],
            }
        if self.ingester is not None:
            st = self.ingester.last
            out["journal"] = {
                "backlog_bytes": st.backlog_bytes,
                "last_lag_s": st.lag_s,
                "records_ingested": self.ingester.total_records,
                "last_success": self.ingester.last_success,
            }
        return out


def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the exit code."""
    service = EvictorService(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        service.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.start()
    except AlreadyRunningError as exc:
        log.error("%s", exc)
        return EXIT_ALREADY_RUNNING
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        if service.elector is not None:
            service.elector.release()
        if service.http is not None:
            service.http.stop()
        return EXIT_CONFIG
    service.wait()
    service.stop(exiting=True)
    return EXIT_CONFIG if service.fatal else EXIT_OK
