"""One eviction pass: turn limits into a victim list (`plan_gc`), then delete it safely (`execute_plan`).

The `kvfs gc` command and the evictor run exactly this code.  Planning reads only the catalog (no crawling):
the policy streams blocks in eviction order from SQL and the planner stops as soon as each limit is met.
Execution deletes through `RootGuard` (root-confined, never following symlinks), in batches, giving the caller
a chance to drop victims that were used since they were chosen (`recheck`), then removes the catalog rows and
writes the eviction log.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from kvfs import metrics
from kvfs.gcpause import cyclic_gc_paused
from kvfs.layout import BlockKey, parse_namespace_dir
from kvfs.policy import EvictionPolicy, get_policy
from kvfs.safety import RootGuard

if TYPE_CHECKING:
    from kvfs.catalog import Catalog, Usage
    from kvfs.scan import OrphanInfo

# "Everything that matches": larger than any real tree, small enough for every SQL integer type.
_ALL_BYTES = 1 << 62


class EvictReason(StrEnum):
    CAPACITY = "capacity"
    TTL = "ttl"
    QUOTA = "quota"
    RETIRED = "retired"
    ORPHAN = "orphan"
    CORRUPT = "corrupt"


# Reasons that delete some blocks to keep the rest: the policy's history hears of these only.
_KEEPING = frozenset({EvictReason.CAPACITY, EvictReason.QUOTA})


@dataclass(frozen=True)
class GcLimits:
    """What one pass enforces.  `None` switches a limit off.

    With `namespace` set, every limit applies to that namespace alone (`max_bytes` caps its usage).
    `min_age` protects blocks whose last access or creation is that recent, whatever the other limits say.
    """

    max_bytes: int | None = None
    ttl: float | None = None
    quotas: Mapping[str, int] = field(default_factory=dict)
    retire: Sequence[str] = ()
    orphan_grace: float | None = None
    min_age: float = 0.0
    namespace: str | None = None


# Not frozen: a frozen dataclass's __init__ costs ~3x more, and the planner builds 100k+ of these.
@dataclass(slots=True)
class Victim:
    key: BlockKey
    size: int
    reason: EvictReason
    # The recency the block was chosen on: the recheck spares it if the catalog now says it was used since.
    last_access: float = 0.0
    block_id: int | None = None


@dataclass(slots=True)
class Tally:
    files: int = 0
    bytes: int = 0

    def add(self, nbytes: int, files: int = 1) -> None:
        self.files += files
        self.bytes += nbytes

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass
class GcPlan:
    victims: list[Victim]
    orphans: list[OrphanInfo]
    by_reason: dict[EvictReason, Tally]
    by_namespace: dict[str, Tally]
    total_files: int
    total_bytes: int
    # Catalog usage the plan was computed from (in the pass's scope) and the policy that ordered it.
    usage_files: int = 0
    usage_bytes: int = 0
    policy: str = ""
    now: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "planned_files": self.total_files,
            "planned_bytes": self.total_bytes,
            "usage_files": self.usage_files,
            "usage_bytes": self.usage_bytes,
            "by_reason": {str(r): t.as_dict() for r, t in self.by_reason.items()},
            "by_namespace": {ns: t.as_dict() for ns, t in self.by_namespace.items()},
        }


@dataclass
class GcResult:
    deleted_files: int
    deleted_bytes: int
    by_reason: dict[EvictReason, Tally]
    skipped_recently_used: int
    dry_run: bool
    # Files already gone when we came to delete them (their rows are removed too), paths RootGuard refused
    # (symlinks, non-regular files), and unlink errors (rows kept: a later pass retries).
    missing: int = 0
    refused: int = 0
    errors: int = 0
    by_namespace: dict[str, Tally] = field(default_factory=dict)
    duration_s: float = 0.0
    dirs_removed: int = 0  # emptied bucket directories removed after the deletions
    emptied_dirs: set[str] = field(default_factory=set)  # not yet removed (execute_plan(reclaim_dirs=False))

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted_files": self.deleted_files,
            "deleted_bytes": self.deleted_bytes,
            "by_reason": {str(r): t.as_dict() for r, t in self.by_reason.items()},
            "by_namespace": {ns: t.as_dict() for ns, t in self.by_namespace.items()},
            "dry_run": self.dry_run,
            "skipped_recently_used": self.skipped_recently_used,
            "missing": self.missing,
            "refused": self.refused,
            "errors": self.errors,
            "dirs_removed": self.dirs_removed,
            "duration_s": round(self.duration_s, 3),
        }


class _Planner:
    def __init__(self, catalog: Catalog, policy: EvictionPolicy, protect_after: float) -> None:
        self.catalog = catalog
        self.policy = policy
        self.protect_after = protect_after
        self.chosen: dict[int | BlockKey, Victim] = {}
        self.chosen_bytes_by_ns: dict[str, int] = {}
        self.by_reason: dict[EvictReason, Tally] = {}
        self.chosen_bytes = 0

    def take(
        self,
        namespace_ids: Sequence[int] | None,
        reason: EvictReason,
        *,
        need_bytes: int = _ALL_BYTES,
        protect_after: float | None = None,
        in_scope_chosen: int = 0,
    ) -> None:
        """Add candidates of `reason` until `need_bytes` more are chosen; already chosen blocks are skipped."""
        if need_bytes <= 0:
            return
        protect = self.protect_after if protect_after is None else min(protect_after, self.protect_after)
        # The policy may offer blocks an earlier reason already took: ask for that much more.
        limit = min(_ALL_BYTES, need_bytes + in_scope_chosen)
        stream: Iterator[Any] = self.policy.candidates(
            self.catalog, namespace_ids=namespace_ids, protect_after=protect, limit_bytes=limit
        )
        # Hot loop (100k+ candidates per pass): locals only; per-namespace file counts are taken at the end.
        chosen = self.chosen
        bytes_by_ns: dict[str, int] = {}
        freed = files = 0
        try:
            for cand in stream:
                block_id = cand.block_id
                ident: int | BlockKey = block_id if block_id is not None else cand.key
                if ident in chosen:
                    continue
                size = cand.size
                key = cand.key
                chosen[ident] = Victim(key, size, reason, cand.last_access, block_id)
                ns = key.namespace
                bytes_by_ns[ns] = bytes_by_ns.get(ns, 0) + size
                freed += size
                files += 1
                if freed >= need_bytes:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        for ns, nbytes in bytes_by_ns.items():
            self.chosen_bytes_by_ns[ns] = self.chosen_bytes_by_ns.get(ns, 0) + nbytes
        self.chosen_bytes += freed
        if files:
            self.by_reason.setdefault(reason, Tally()).add(freed, files)


def plan_gc(
    catalog: Catalog,
    limits: GcLimits,
    *,
    now: float | None = None,
    policy: EvictionPolicy | str | None = None,
    orphans: Sequence[OrphanInfo] = (),
    usage: Usage | None = None,
) -> GcPlan:
    """Choose the victims of one pass, from the catalog alone.

    Reasons are applied in this order, each skipping what an earlier one took: retired namespaces (named in
    `limits.retire` or marked retired in the catalog), TTL, per-namespace quotas (policy order within the
    namespace), capacity (policy order over the scope until usage <= `max_bytes`), then temp-file orphans
    older than `orphan_grace` (from `orphans`, as found by a scan).  `usage`: the catalog's `usage()` when the
    caller has just computed it (saves one aggregate over the catalog).  Raises ValueError for an unknown
    namespace.
    """
    with cyclic_gc_paused():
        return _plan(catalog, limits, now=now, policy=policy, orphans=orphans, usage=usage)


def _plan(
    catalog: Catalog,
    limits: GcLimits,
    *,
    now: float | None,
    policy: EvictionPolicy | str | None,
    orphans: Sequence[OrphanInfo],
    usage: Usage | None,
) -> GcPlan:
    now = time.time() if now is None else now
    if policy is None or isinstance(policy, str):
        policy = get_policy(policy)
    policy.prepare(catalog)  # the policy's bookkeeping writes, once per pass (candidates only read)
    infos = {ns.name: ns for ns in catalog.namespaces()}

    def ns_id(name: str) -> int:
        info = infos.get(name)
        if info is None:
            raise ValueError(f"unknown namespace {name!r} (not in the catalog: run `kvfs scan` first?)")
        return info.id

    scope_name = limits.namespace
    scope_ids = None if scope_name is None else [ns_id(scope_name)]
    usage = catalog.usage() if usage is None else usage
    ns_usage = {u.namespace: u for u in usage.namespaces}
    if scope_name is None:
        usage_files, usage_bytes = usage.total_files, usage.total_bytes
    else:
        scoped = ns_usage.get(scope_name)
        usage_files, usage_bytes = (scoped.files, scoped.bytes) if scoped else (0, 0)

    planner = _Planner(catalog, policy, now - limits.min_age)

    retired = [ns_id(name) for name in dict.fromkeys(limits.retire)]
    retired += [
        info.id
        for info in infos.values()
        if info.retired and info.id not in retired and (scope_name is None or info.name == scope_name)
    ]
    for rid in retired:
        planner.take([rid], EvictReason.RETIRED)

    if limits.ttl is not None:
        planner.take(scope_ids, EvictReason.TTL, protect_after=now - limits.ttl)

    for name, quota in limits.quotas.items():
        if scope_name is not None and name != scope_name:
            continue
        if name not in infos:
            continue  # a quota for a namespace nobody has written yet
        chosen_here = planner.chosen_bytes_by_ns.get(name, 0)
        current = (ns_usage[name].bytes if name in ns_usage else 0) - chosen_here
        planner.take(
            [ns_id(name)], EvictReason.QUOTA, need_bytes=current - quota, in_scope_chosen=chosen_here
        )

    if limits.max_bytes is not None:
        chosen_here = (
            planner.chosen_bytes if scope_name is None else planner.chosen_bytes_by_ns.get(scope_name, 0)
        )
        excess = usage_bytes - chosen_here - limits.max_bytes
        planner.take(scope_ids, EvictReason.CAPACITY, need_bytes=excess, in_scope_chosen=chosen_here)

    victims = list(planner.chosen.values())
    by_reason = planner.by_reason
    files_by_ns = Counter(v.key.namespace for v in victims)
    by_namespace = {ns: Tally(files_by_ns[ns], nbytes) for ns, nbytes in planner.chosen_bytes_by_ns.items()}

    old_orphans: list[OrphanInfo] = []
    if limits.orphan_grace is not None:
        cutoff = now - limits.orphan_grace
        for orphan in orphans:
            ns = orphan_namespace(orphan.relpath)
            if orphan.mtime < cutoff and (scope_name is None or ns == scope_name):
                old_orphans.append(orphan)
                by_reason.setdefault(EvictReason.ORPHAN, Tally()).add(orphan.size)
                by_namespace.setdefault(ns or "", Tally()).add(orphan.size)

    return GcPlan(
        victims=victims,
        orphans=old_orphans,
        by_reason=by_reason,
        by_namespace=by_namespace,
        total_files=len(victims) + len(old_orphans),
        total_bytes=planner.chosen_bytes + sum(o.size for o in old_orphans),
        usage_files=usage_files,
        usage_bytes=usage_bytes,
        policy=policy.name,
        now=now,
    )


def orphan_namespace(relpath: str) -> str | None:
    """Namespace of a temp file's path (`<ns>[_r<rank>]/...`), None when it is not under one."""
    parsed = parse_namespace_dir(relpath.split("/", 1)[0])
    return parsed[0] if parsed else None


# --- execution -------------------------------------------------------------------------------------------

Recheck = Callable[[list[Victim]], list[Victim]]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def execute_plan(
    root: str | os.PathLike[str],
    catalog: Catalog,
    plan: GcPlan,
    *,
    dry_run: bool,
    recheck: Recheck | None = None,
    batch_size: int = 1000,
    now: float | None = None,
    policy: EvictionPolicy | str | None = None,
    reclaim_dirs: bool = True,
) -> GcResult:
    """Delete the plan's victims (and orphans) under `root`, batch by batch.

    Bucket directories the deletions emptied are removed at the end (`reclaim_dirs`), or, with
    `reclaim_dirs=False`, left in `result.emptied_dirs` for the caller to pass to `reclaim_empty_dirs` later:
    an rmdir costs about ten unlinks on ext4, so the evictor reaches its target first and tidies afterwards.

    Before each batch `recheck` (if given) returns the victims still to delete: the evictor ingests the
    journals there and drops blocks used since they were chosen.  Files are unlinked by `RootGuard` (relative
    paths only, no symlink followed, regular files only).  Rows of files now gone are removed; a file that
    could not be deleted keeps its row.  One eviction-log row per namespace and reason.  `dry_run` deletes
    nothing and reports what the pass would delete (with `dry_run=True`).  `policy` (the one that ordered the
    plan) is told which capacity/quota victims were deleted, after each batch (`EvictionPolicy.evicted`).
    """
    start = time.monotonic()
    if isinstance(policy, str):
        policy = get_policy(policy)
    if dry_run:
        return GcResult(
            plan.total_files,
            plan.total_bytes,
            {r: Tally(t.files, t.bytes) for r, t in plan.by_reason.items()},
            0,
            True,
            by_namespace={ns: Tally(t.files, t.bytes) for ns, t in plan.by_namespace.items()},
            duration_s=time.monotonic() - start,
        )
    result = GcResult(0, 0, {}, 0, False)
    now = time.time() if now is None else now
    guard = RootGuard(root)
    log: dict[tuple[str, EvictReason], Tally] = {}
    unpublished: dict[EvictReason, Tally] = {}

    def count(namespace: str, reason: EvictReason, nbytes: int) -> None:
        result.deleted_files += 1
        result.deleted_bytes += nbytes
        result.by_reason.setdefault(reason, Tally()).add(nbytes)
        result.by_namespace.setdefault(namespace, Tally()).add(nbytes)
        log.setdefault((namespace, reason), Tally()).add(nbytes)
        unpublished.setdefault(reason, Tally()).add(nbytes)

    def publish() -> None:
        """Metrics once per batch: a labelled counter per file would cost more than the unlink."""
        for reason, tally in unpublished.items():
            metrics.GC_DELETED_FILES.labels(str(reason)).inc(tally.files)
            metrics.GC_DELETED_BYTES.labels(str(reason)).inc(tally.bytes)
        unpublished.clear()

    for batch in _chunks(plan.victims, max(1, batch_size)):
        victims = list(batch)
        if recheck is not None:
            kept = recheck(victims)
            result.skipped_recently_used += len(victims) - len(kept)
            metrics.GC_SKIPPED_RECENT.inc(len(victims) - len(kept))
            victims = kept
        if not victims:
            continue
        gone = _unlink_batch(guard, [v.key.relpath() for v in victims], result)
        removed_ids: list[int] = []
        removed_keys: list[BlockKey] = []
        emptied: set[str] = set()  # bucket directories that lost a file
        for victim, deleted, missing in zip(victims, *gone, strict=True):
            if deleted:
                count(victim.key.namespace, victim.reason, victim.size)
            if deleted or missing:
                if victim.block_id is not None:
                    removed_ids.append(victim.block_id)
                else:
                    removed_keys.append(victim.key)
                emptied.add(victim.key.relpath().rpartition("/")[0])
        if removed_ids:
            catalog.remove_block_ids(removed_ids)
        if removed_keys:
            catalog.remove_blocks(removed_keys)
        if policy is not None:
            # The policy's history (2q's ghosts) learns of blocks deleted to keep the rest, not of TTL/retired.
            policy.evicted(
                catalog, [v for v, d in zip(victims, gone[0], strict=True) if d and v.reason in _KEEPING]
            )
        result.emptied_dirs.update(emptied)
        publish()

    for batch in _chunks(plan.orphans, max(1, batch_size)):
        deleted_flags, _missing = _unlink_batch(guard, [o.relpath for o in batch], result)
        for orphan, deleted in zip(batch, deleted_flags, strict=True):
            if deleted:
                count(orphan_namespace(orphan.relpath) or "", EvictReason.ORPHAN, orphan.size)
        result.emptied_dirs.update(
            o.relpath.rpartition("/")[0] for o, d in zip(batch, deleted_flags, strict=True) if d
        )

    publish()
    for (namespace, reason), tally in log.items():
        catalog.log_eviction(now, namespace, str(reason), tally.files, tally.bytes)
    if reclaim_dirs:
        result.dirs_removed += reclaim_empty_dirs(root, result.emptied_dirs)[0]
        result.emptied_dirs.clear()
    result.duration_s = time.monotonic() - start
    return result


def reclaim_empty_dirs(
    root: str | os.PathLike[str], dirs: set[str], *, min_age: float = 0.0, now: float | None = None
) -> tuple[int, set[str]]:
    """Remove the emptied bucket directories `dirs` (each holds a filesystem block, and a tree of empty ones
    slows every walk) and their emptied parents; namespace directories stay.  `rmdir` only removes empty ones,
    kvfs writers re-create a directory that vanished under them, and with `min_age` a directory changed more
    recently than that is kept for a later call (`RootGuard.rmdir_empty`).  Returns (removed, kept young)."""
    young: set[str] = set()
    changed_before = (time.time() if now is None else now) - min_age if min_age > 0 else None
    removed = RootGuard(root).rmdir_empty(dirs, keep_depth=1, changed_before=changed_before, young=young)
    return removed, young


def _unlink_batch(guard: RootGuard, relpaths: list[str], result: GcResult) -> tuple[list[bool], list[bool]]:
    """Unlink `relpaths`; per path: (deleted by us, already gone).  Refused or failed paths get both False."""
    stats = guard.unlink_many(relpaths)
    result.missing += stats.missing
    result.refused += stats.refused
    result.errors += stats.errors
    if stats.refused:
        metrics.GC_UNLINK_FAILURES.labels("refused").inc(stats.refused)
    if stats.errors:
        metrics.GC_UNLINK_FAILURES.labels("error").inc(stats.errors)
    if stats.deleted == len(relpaths):
        return [True] * len(relpaths), [False] * len(relpaths)
    kept = set(stats.not_deleted)
    gone = [rel not in kept for rel in relpaths]
    missing_paths = getattr(stats, "missing_paths", None)
    if missing_paths is not None and len(missing_paths) == stats.missing:
        # RootGuard says which paths were already gone: exact per-path attribution.
        missing = set(missing_paths)
        return (
            [g and rel not in missing for g, rel in zip(gone, relpaths, strict=True)],
            [rel in missing for rel in relpaths],
        )
    if stats.missing == 0:
        return gone, [False] * len(relpaths)
    if stats.deleted == 0:
        return [False] * len(relpaths), gone
    # Some deleted by us, some already gone: which is which is not reported per path.  Attribute the
    # deletions to the first gone paths: the totals stay exact, only the per-reason split may shift.
    deleted_flags, missing_flags, left = [], [], stats.deleted
    for is_gone in gone:
        ours = is_gone and left > 0
        left -= ours
        deleted_flags.append(ours)
        missing_flags.append(is_gone and not ours)
    return deleted_flags, missing_flags


def still_unused(
    catalog: Catalog, victims: list[Victim], *, protect_after: float | None = None
) -> list[Victim]:
    """The pre-delete recency rule, the one copy (the CLI's recheck and the evictor's both run it): keep only
    victims whose row is still there under the same id and whose last_access has not moved past the one they
    were chosen on, nor into the protection window (>= `protect_after`: --min-age counted from now)."""
    by_id = all(v.block_id is not None for v in victims)
    current: Mapping[Any, float] = (
        catalog.last_access_by_id([v.block_id for v in victims])  # type: ignore[misc]
        if by_id
        else catalog.last_access_of(v.key for v in victims)
    )
    keep = []
    for victim in victims:
        seen = current.get(victim.block_id if by_id else victim.key)
        # Gone (or re-created under a new id), used since it was chosen, or now inside the grace window.
        if seen is None or seen > victim.last_access or (protect_after is not None and seen >= protect_after):
            continue
        keep.append(victim)
    return keep


def make_recency_recheck(
    catalog: Catalog, *, ingest: Callable[[], Any] | None = None, min_age: float = 0.0
) -> Recheck:
    """A `recheck` that first runs `ingest` (journals → catalog), then applies `still_unused` with the
    protection window `min_age` seconds back from the moment of the recheck."""

    def recheck(victims: list[Victim]) -> list[Victim]:
        if ingest is not None:
            ingest()
        return still_unused(catalog, victims, protect_after=time.time() - min_age if min_age > 0 else None)

    return recheck
