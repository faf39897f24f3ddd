"""The leader's eviction passes: `kvfs.eviction.run_pass` with the evictor's capacity, hooks and reporting.

Capacity is measured from the catalog when `max_bytes` is set and from statvfs of the root otherwise; both are
O(1) in filesystem operations, so a pass under the watermark touches the filesystem only for the journal (and
one statvfs).  Over the high watermark the pass plans enough victims to come down to the low watermark.
Each pass ends in an outcome (`idle`, `evicted`, `stalled`, `failed`); a pass that cannot make progress says
why in one log line per cause per minute and leaves `kvfs_evictor_last_pass_success_timestamp_seconds` behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evictor import metrics
from evictor.settings import Settings
from kvfs.catalog import Catalog
from kvfs.eviction import Limits, PassHooks, Plan, Result, limits_from_settings, reclaim_empty_dirs, run_pass
from kvfs.fsusage import fs_usage
from kvfs.policy import get_policy
from kvfs.units import format_size

log = logging.getLogger("kvfs.evictor.passes")

# Why a pass that had work due did none of it (`kvfs_evictor_pass_stalled{cause}`).
STALL_CAUSES = ("unknown_namespace", "protected_by_min_age", "deletes_failing", "catalog_errors")


@dataclass(slots=True)
class Capacity:
    used: int
    capacity: int
    source: str  # "max_bytes" (catalog bytes against the setting) or "statvfs" (the filesystem)
    catalog_bytes: int
    catalog_files: int
    namespaces: list[Any] = field(default_factory=list)
    usage: Any = None  # the catalog's Usage, handed to the planner so it is computed once per pass

    @property
    def ratio(self) -> float:
        return self.used / self.capacity if self.capacity else 0.0


@dataclass(slots=True)
class PassReport:
    time: float
    over_high: bool
    capacity: Capacity
    planned_files: int = 0
    planned_bytes: int = 0
    plan_s: float = 0.0
    result: Result | None = None
    duration_s: float = 0.0
    outcome: str = "idle"  # idle | evicted | stalled (over the watermark, nothing removable) | failed
    stalled_because: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "over_high_watermark": self.over_high,
            "usage_bytes": self.capacity.used,
            "capacity_bytes": self.capacity.capacity,
            "planned_files": self.planned_files,
            "planned_bytes": self.planned_bytes,
            "plan_s": round(self.plan_s, 4),
            "duration_s": round(self.duration_s, 4),
            "result": self.result.to_json() if self.result else None,
            "outcome": self.outcome,
            "stalled_because": self.stalled_because,
        }


def measure_capacity(settings: Settings, catalog: Catalog, usage: Any = None) -> Capacity:
    usage = catalog.usage() if usage is None else usage
    if settings.max_bytes is not None:
        used, cap, source = usage.total_bytes, settings.max_bytes, "max_bytes"
    else:
        metrics.METADATA_OPS.labels("statvfs").inc()
        fs = fs_usage(settings.root)
        cap, used, source = fs.size, fs.used, "statvfs"
    return Capacity(used, cap, source, usage.total_bytes, usage.total_files, list(usage.namespaces), usage)


def capacity_target(settings: Settings, cap: Capacity) -> int | None:
    """Catalog bytes to keep (the `max_bytes` of the plan), or None when under the high watermark."""
    if cap.used <= cap.capacity * settings.high_watermark / 100:
        return None
    need_free = cap.used - int(cap.capacity * settings.low_watermark / 100)
    return max(0, cap.catalog_bytes - need_free)


class PassRunner:
    """Runs the leader's passes; `ingest()` is the journal feed (called again just before each delete batch)."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        ingest: Callable[[], Any],
        temp_files: Callable[[], list[Any]],
        forget_temp_files: Callable[[list[str]], None],
        still_leader: Callable[[], bool],
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.ingest = ingest
        self.temp_files = temp_files
        self.forget_temp_files = forget_temp_files
        self.still_leader = still_leader
        self.stopping = stopping
        self.policy = get_policy(settings.policy)
        # From the start, not the first pass: a policy that learns from the journal (adaptive) sees it all.
        self.policy.attach(catalog)
        self.last: PassReport | None = None
        self.last_success: float | None = None  # wall time of the last pass that did what was due
        self._emptied_dirs: dict[str, float] = {}  # emptied bucket directory -> when queued, not yet removed
        self._said: dict[str, float] = {}  # cause -> when it was last logged (one line per cause per minute)
        self.phase = "idle"
        self.progress_at = time.monotonic()  # last step of the pass in progress (health: a stuck pass)
        self.paused_batches = 0
        for mark in ("high", "low"):
            value = settings.high_watermark if mark == "high" else settings.low_watermark
            metrics.WATERMARK_RATIO.labels(mark).set(value / 100)

    def _publish(self, cap: Capacity) -> None:
        metrics.USAGE_BYTES.set(cap.used)
        metrics.CAPACITY_BYTES.set(cap.capacity)
        metrics.USAGE_RATIO.set(cap.ratio)
        seen = set()
        for ns in cap.namespaces:
            metrics.NAMESPACE_BYTES.labels(ns.namespace).set(ns.bytes)
            metrics.NAMESPACE_FILES.labels(ns.namespace).set(ns.files)
            seen.add(ns.namespace)
        for labels in list(getattr(metrics.NAMESPACE_BYTES, "_metrics", {})):
            if labels[0] not in seen:  # a namespace evicted to nothing: drop its series
                metrics.NAMESPACE_BYTES.remove(*labels)
                metrics.NAMESPACE_FILES.remove(*labels)

    def run_pass(self) -> PassReport:
        now = time.time()
        state: dict[str, Any] = {}

        def limits(usage: Any) -> Limits:
            cap = measure_capacity(self.settings, self.catalog, usage)
            self._publish(cap)
            target = capacity_target(self.settings, cap)
            metrics.OVER_HIGH_WATERMARK.set(1 if target is not None else 0)
            state.update(cap=cap, target=target)
            return limits_from_settings(self.settings, max_bytes=target)

        outcome = run_pass(
            self.catalog,
            self.settings.root,
            limits,
            self.policy,
            hooks=PassHooks(ingest=self.ingest, before_batch=self._before_batch, on_phase=self._set_phase),
            temp_files=self.temp_files(),
            now=now,
            dry_run=self.settings.dry_run,
            batch_size=self.settings.delete_batch,
            reclaim_dirs=False,  # after the pass (reclaim_dirs): the target first
        )
        cap, target = state["cap"], state["target"]
        report = PassReport(time=now, over_high=target is not None, capacity=cap, plan_s=outcome.plan_s)
        metrics.PLAN_SECONDS.set(report.plan_s)
        plan, result = outcome.plan, outcome.result
        report.planned_files, report.planned_bytes = plan.total_files, plan.total_bytes
        report.result = result
        if result is not None:
            if not result.dry_run and plan.temp_files:
                self.forget_temp_files([t.relpath for t in plan.temp_files])
            self._account(plan, result, cap, target)
        report.outcome, report.stalled_because = self._judge(plan, result, target)
        if report.outcome in ("idle", "evicted"):
            self.last_success = now
            metrics.LAST_PASS_SUCCESS.set(now)
        for cause in STALL_CAUSES:
            metrics.PASS_STALLED.labels(cause).set(1 if cause in report.stalled_because else 0)
        report.duration_s = outcome.duration_s
        metrics.ENFORCE_SECONDS.observe(report.duration_s)
        self.last = report
        return report

    def _judge(self, plan: Plan, result: Result | None, target: int | None) -> tuple[str, list[str]]:
        """The pass's outcome, and why a pass that had work due could not do it (each cause logged at most once
        a minute, so a stalled evictor says why without flooding the log)."""
        causes: list[str] = []
        if plan.unknown_namespaces:
            causes.append("unknown_namespace")
            self._say(
                "unknown_namespace",
                "retire/quota names namespaces the catalog does not know (skipped): %s",
                ", ".join(plan.unknown_namespaces),
                namespaces=list(plan.unknown_namespaces),
            )
        if plan.shortfall_bytes > 0:
            causes.append("protected_by_min_age")
            self._say(
                "protected_by_min_age",
                "limits exceeded by %s that no pass can remove yet: every remaining block was used within "
                "min_age (%ss); lower min_age or add capacity",
                format_size(plan.shortfall_bytes),
                f"{self.settings.min_age:g}",
                bytes=plan.shortfall_bytes,
                min_age_s=self.settings.min_age,
            )
        if result is not None and not result.dry_run and result.attempted and result.deleted_files == 0:
            causes.append("deletes_failing")
            self._say(
                "deletes_failing",
                "every removal of this pass failed (%d errors, %d refused): check the mount's permissions",
                result.errors,
                result.refused,
                errors=result.errors,
                refused=result.refused,
            )
        if result is not None and result.recheck_failures:
            causes.append("catalog_errors")
            self._say(
                "catalog_errors",
                "%d delete batches kept: recency could not be confirmed",
                result.recheck_failures,
                batches=result.recheck_failures,
            )
        if "deletes_failing" in causes:
            return "failed", causes
        if result is not None and result.deleted_files:
            return "evicted", causes
        due = target is not None or bool(plan.total_files)
        if due and causes:
            return "stalled", causes
        return "idle", causes

    def _say(self, cause: str, message: str, *args: Any, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._said.get(cause, -1e9) >= 60.0:
            self._said[cause] = now
            log.warning(message, *args, extra={"event": "pass_stalled", "cause": cause, **fields})

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.progress_at = time.monotonic()

    def reclaim_dirs(self, report: PassReport) -> int:
        """After a pass (rmdir costs about ten unlinks: the target first): remove the bucket directories passes
        emptied, each once nothing has changed in it for `min_age` (so a stock writer that has just created one
        keeps it).  A directory is looked at once per `min_age`, not on every pass: no crawl under the watermark."""
        now = time.time()
        if report.result is not None:
            for rel in report.result.emptied_dirs:
                self._emptied_dirs[rel] = now
            report.result.emptied_dirs.clear()
        due = {rel for rel, queued in self._emptied_dirs.items() if queued <= now - self.settings.min_age}
        if not due:
            return 0
        self.phase = "removing_empty_dirs"
        try:
            removed, young = reclaim_empty_dirs(
                self.settings.root, due, min_age=self.settings.min_age, now=now
            )
        finally:
            self.phase = "idle"
        for rel in due:
            self._emptied_dirs.pop(rel, None)
        for rel in young:  # changed since (or a parent whose child we just removed): look again later
            self._emptied_dirs[rel] = now
        if report.result is not None:
            report.result.dirs_removed += removed
        if removed:
            log.info(
                "removed %d emptied bucket directories (%d wait for min_age)",
                removed,
                len(young),
                extra={"event": "dirs_removed", "dirs": removed, "waiting": len(young)},
            )
        return removed

    def _before_batch(self, size: int) -> bool:
        """Just before a batch is removed: the optional pause, then stop and leadership checks."""
        if self.settings.pause_before_delete > 0:
            self.phase = "paused_before_delete"
            self.paused_batches += 1
            log.info(
                "pausing %.1fs before deleting a batch of %d (pause_before_delete)",
                self.settings.pause_before_delete,
                size,
            )
            self.stopping.wait(self.settings.pause_before_delete)
            self.phase = "deleting"
        self.progress_at = time.monotonic()
        if self.stopping.is_set():
            return False
        if not self.still_leader():
            log.warning(
                "no longer the leader: dropping a batch of %d victims",
                size,
                extra={"event": "batch_dropped", "reason": "not_leader", "files": size},
            )
            return False
        return True

    def _account(self, plan: Plan, result: Result, cap: Capacity, target: int | None) -> None:
        order = self.policy.current_order()  # adaptive: which of its orders ranked this pass's victims
        reasons = ", ".join(
            f"{r}: {t.files} files {format_size(t.bytes)}" for r, t in result.by_reason.items()
        )
        spaces = ", ".join(
            f"{ns}: {t.files} files {format_size(t.bytes)}" for ns, t in sorted(result.by_namespace.items())
        )
        log.info(
            "%s %d files, %s (%s) [%s]; usage %s of %s (%.1f%%, %s)%s; recheck kept %d, missing %d, "
            "refused %d, errors %d%s",
            "dry-run: would evict" if result.dry_run else "evicted",
            result.deleted_files,
            format_size(result.deleted_bytes),
            reasons or "nothing",
            spaces,
            format_size(cap.used),
            format_size(cap.capacity),
            100 * cap.ratio,
            cap.source,
            f"; capacity target {format_size(target)} of catalog" if target is not None else "",
            result.skipped_recently_used,
            result.missing,
            result.refused,
            result.errors,
            f"; order {order}" if order is not None else "",
            extra={
                "event": "dry_run" if result.dry_run else "evicted",
                "files": result.deleted_files,
                "bytes": result.deleted_bytes,
                "reasons": {
                    str(r): {"files": t.files, "bytes": t.bytes} for r, t in result.by_reason.items()
                },
                "namespaces": {
                    ns: {"files": t.files, "bytes": t.bytes} for ns, t in result.by_namespace.items()
                },
                "usage_bytes": cap.used,
                "capacity_bytes": cap.capacity,
                "usage_source": cap.source,
                "capacity_target_bytes": target,
                "spared": result.skipped_recently_used,
                "missing": result.missing,
                "refused": result.refused,
                "errors": result.errors,
                **({"order": order} if order is not None else {}),
            },
        )
        if result.errors:
            metrics.ERRORS.labels("delete").inc(result.errors)
