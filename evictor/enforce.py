"""One enforcement pass of the leader: measure usage, plan (catalog only), recheck, delete, report.

Capacity is measured from the catalog when `max_bytes` is set and from statvfs of the root otherwise; both are
O(1) in filesystem operations, so a pass under the watermark touches the filesystem only for the journal (and
one statvfs).  Over the high watermark the pass plans enough victims to come down to the low watermark.
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
from kvfs.fsusage import fs_usage
from kvfs.gc import (
    GcLimits,
    GcPlan,
    GcResult,
    Victim,
    execute_plan,
    plan_gc,
    reclaim_empty_dirs,
    still_unused,
)
from kvfs.policy import get_policy
from kvfs.units import format_size

log = logging.getLogger("kvfs.evictor.enforce")


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
    result: GcResult | None = None
    duration_s: float = 0.0

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
        }


def measure_capacity(settings: Settings, catalog: Catalog) -> Capacity:
    usage = catalog.usage()
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


class Enforcer:
    """Runs passes; `ingest()` is the journal feed (called again just before each delete batch)."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        ingest: Callable[[], Any],
        orphans: Callable[[], list[Any]],
        forget_orphans: Callable[[list[str]], None],
        still_leader: Callable[[], bool],
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.ingest = ingest
        self.orphans = orphans
        self.forget_orphans = forget_orphans
        self.still_leader = still_leader
        self.stopping = stopping
        self.policy = get_policy(settings.policy)
        self.last: PassReport | None = None
        self._emptied_dirs: dict[str, float] = {}  # emptied bucket directory -> when queued, not yet removed
        self.phase = "idle"
        self.paused_batches = 0
        for mark in ("high", "low"):
            value = settings.high_watermark if mark == "high" else settings.low_watermark
            metrics.WATERMARK_RATIO.labels(mark).set(value / 100)

    def limits(self, target: int | None) -> GcLimits:
        s = self.settings
        return GcLimits(
            max_bytes=target,
            ttl=s.ttl,
            quotas=dict(s.quotas),
            retire=tuple(s.retire),
            orphan_grace=s.orphan_grace,
            min_age=s.min_age,
        )

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
        start = time.monotonic()
        now = time.time()
        self.ingest()
        cap = measure_capacity(self.settings, self.catalog)
        self._publish(cap)
        target = capacity_target(self.settings, cap)
        metrics.OVER_HIGH_WATERMARK.set(1 if target is not None else 0)
        report = PassReport(time=now, over_high=target is not None, capacity=cap)
        self.phase = "planning"
        t0 = time.monotonic()
        plan = plan_gc(
            self.catalog,
            self.limits(target),
            now=now,
            policy=self.policy,
            orphans=self.orphans(),
            usage=cap.usage,
        )
        report.plan_s = time.monotonic() - t0
        metrics.PLAN_SECONDS.set(report.plan_s)
        report.planned_files, report.planned_bytes = plan.total_files, plan.total_bytes
        if plan.total_files:
            self.phase = "deleting"
            try:
                result = execute_plan(
                    self.settings.root,
                    self.catalog,
                    plan,
                    dry_run=self.settings.dry_run,
                    recheck=self._recheck,
                    batch_size=self.settings.delete_batch,
                    policy=self.policy,
                    reclaim_dirs=False,  # after the pass (reclaim_dirs): the target first
                )
            finally:
                self.phase = "idle"
            report.result = result
            if not result.dry_run and plan.orphans:
                self.forget_orphans([o.relpath for o in plan.orphans])
            self._account(plan, result, cap, target)
        self.phase = "idle"
        report.duration_s = time.monotonic() - start
        metrics.ENFORCE_SECONDS.observe(report.duration_s)
        self.last = report
        return report

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
            log.info("removed %d emptied bucket directories (%d wait for min_age)", removed, len(young))
        return removed

    def _recheck(self, batch: list[Victim]) -> list[Victim]:
        """Just before a batch is unlinked: pick up the newest journals and spare what was used since."""
        if self.settings.pause_before_delete > 0:
            self.phase = "paused_before_delete"
            self.paused_batches += 1
            log.info(
                "pausing %.1fs before deleting a batch of %d (pause_before_delete)",
                self.settings.pause_before_delete,
                len(batch),
            )
            self.stopping.wait(self.settings.pause_before_delete)
            self.phase = "deleting"
        if self.stopping.is_set():
            return []
        if not self.still_leader():
            log.warning("no longer the leader: dropping a batch of %d victims", len(batch))
            return []
        try:
            self.ingest()
            keep = still_unused(self.catalog, batch, protect_after=time.time() - self.settings.min_age)
        except Exception as exc:  # noqa: BLE001 - cannot confirm recency: delete nothing, retry next pass
            metrics.ERRORS.labels("catalog").inc()
            log.warning("recheck failed, keeping a batch of %d: %s", len(batch), str(exc).splitlines()[0])
            return []
        spared = len(batch) - len(keep)
        if spared:
            metrics.RECHECK_SPARED.inc(spared)
            log.info("recheck: %d of %d victims were used since they were chosen; kept", spared, len(batch))
        return keep

    def _account(self, plan: GcPlan, result: GcResult, cap: Capacity, target: int | None) -> None:
        for reason, tally in result.by_reason.items():
            if not result.dry_run:
                metrics.EVICTED_FILES.labels(str(reason)).inc(tally.files)
                metrics.EVICTED_BYTES.labels(str(reason)).inc(tally.bytes)
        reasons = ", ".join(
            f"{r}: {t.files} files {format_size(t.bytes)}" for r, t in result.by_reason.items()
        )
        spaces = ", ".join(
            f"{ns}: {t.files} files {format_size(t.bytes)}" for ns, t in sorted(result.by_namespace.items())
        )
        log.info(
            "%s %d files, %s (%s) [%s]; usage %s of %s (%.1f%%, %s)%s; recheck kept %d, missing %d, "
            "refused %d, errors %d",
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
        )
        if result.errors:
            metrics.ERRORS.labels("delete").inc(result.errors)
