"""The delete step of an eviction pass, and the only path by which kvfs removes block files.

`execute_plan` removes a plan's victims batch by batch: before each batch the caller's `recheck` returns the
victims still to remove (used-since victims are spared); files are unlinked by a `Remover` — `RootGuard` for a
real tree (root-confined, never following symlinks, regular files only), `CatalogOnly` for the replay, whose
tier has rows and no files — then the rows of files now gone are removed, the policy hears of the blocks
evicted to keep the rest, and one eviction-log row per namespace and reason is written.  `kvfs verify
--delete-corrupt` removes corrupt files through the same function (a plan of `corrupt` victims).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kvfs import metrics
from kvfs.eviction.limits import KEEPING, EvictReason
from kvfs.eviction.plan import Plan, Tally, Victim, temp_file_namespace
from kvfs.policy import EvictionPolicy, get_policy
from kvfs.safety import RootGuard, UnlinkStats

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

Recheck = Callable[[list[Victim]], list[Victim]]


class Remover(Protocol):
    def unlink_many(self, relpaths: Iterable[str]) -> UnlinkStats: ...


class CatalogOnly:
    """A tier of catalog rows without files (the replay's): every path counts as removed."""

    def unlink_many(self, relpaths: Iterable[str]) -> UnlinkStats:
        return UnlinkStats(deleted=len(list(relpaths)))


@dataclass
class Result:
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
    recheck_failures: int = 0  # batches kept whole because their recency could not be confirmed

    @property
    def attempted(self) -> int:
        """Unlinks tried (deleted, failed or refused), missing files excluded."""
        return self.deleted_files + self.errors + self.refused

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
            "recheck_failures": self.recheck_failures,
            "dirs_removed": self.dirs_removed,
            "duration_s": round(self.duration_s, 3),
        }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def execute_plan(
    root: str | os.PathLike[str],
    catalog: Catalog | None,
    plan: Plan,
    *,
    dry_run: bool,
    recheck: Recheck | None = None,
    batch_size: int = 1000,
    now: float | None = None,
    policy: EvictionPolicy | str | None = None,
    reclaim_dirs: bool = True,
    remover: Remover | None = None,
    log_evictions: bool = True,
) -> Result:
    """Remove the plan's victims (and stale temp files) under `root`, batch by batch.

    Bucket directories the deletions emptied are removed at the end (`reclaim_dirs`), or, with
    `reclaim_dirs=False`, left in `result.emptied_dirs` for the caller to pass to `reclaim_empty_dirs` later:
    an rmdir costs about ten unlinks on ext4, so the evictor reaches its target first and tidies afterwards.
    Rows of files now gone are removed (`catalog=None`: files only); a file that could not be deleted keeps its row.  `dry_run` deletes
    nothing and reports what the pass would delete.  `policy` (the one that ordered the plan) is told which
    capacity/quota victims were deleted, after each batch (`EvictionPolicy.evicted`).
    """
    start = time.monotonic()
    if isinstance(policy, str):
        policy = get_policy(policy)
    if dry_run:
        return Result(
            plan.total_files,
            plan.total_bytes,
            {r: Tally(t.files, t.bytes) for r, t in plan.by_reason.items()},
            0,
            True,
            by_namespace={ns: Tally(t.files, t.bytes) for ns, t in plan.by_namespace.items()},
            duration_s=time.monotonic() - start,
        )
    result = Result(0, 0, {}, 0, False)
    now = time.time() if now is None else now
    remover = RootGuard(root) if remover is None else remover
    log: dict[tuple[str, EvictReason], Tally] = {}
    unpublished: dict[EvictReason, Tally] = {}
    # The order's own writes (S3-FIFO's moves) go with the first batch that removes rows, in its transaction.
    writes = plan.writes if catalog is not None else None
    moves_pending = writes is not None and bool(writes.moves)

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
            metrics.EVICTED_FILES.labels(str(reason)).inc(tally.files)
            metrics.EVICTED_BYTES.labels(str(reason)).inc(tally.bytes)
        unpublished.clear()

    for batch in _chunks(plan.victims, max(1, batch_size)):
        victims = list(batch)
        if recheck is not None:
            kept = recheck(victims)
            result.skipped_recently_used += len(victims) - len(kept)
            victims = kept
        if not victims:
            continue
        gone = _unlink_batch(remover, [v.key.relpath() for v in victims], result)
        removed_ids: list[int] = []
        removed_keys = []
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
        if catalog is not None and (removed_ids or moves_pending):
            # FIFO ghosts: of the blocks deleted to keep the rest (the policy's `evicted` hears of the same).
            ghost_ids = (
                [
                    v.block_id
                    for v, d in zip(victims, gone[0], strict=True)
                    if d and v.reason in KEEPING and v.block_id is not None
                ]
                if writes is not None
                else []
            )
            catalog.remove_block_ids(removed_ids, writes=writes, moves=moves_pending, ghost_ids=ghost_ids)
            moves_pending = False
        if catalog is not None and removed_keys:
            catalog.remove_blocks(removed_keys)
        if policy is not None and catalog is not None:
            # The policy's history (ghosts) learns of blocks evicted to keep the rest, not of TTL/retired.
            policy.evicted(
                catalog, [v for v, d in zip(victims, gone[0], strict=True) if d and v.reason in KEEPING]
            )
        result.emptied_dirs.update(emptied)
        publish()

    for batch in _chunks(plan.temp_files, max(1, batch_size)):
        deleted_flags, _missing = _unlink_batch(remover, [t.relpath for t in batch], result)
        for temp, deleted in zip(batch, deleted_flags, strict=True):
            if deleted:
                count(temp_file_namespace(temp.relpath) or "", EvictReason.TEMP_FILE, temp.size)
        result.emptied_dirs.update(
            t.relpath.rpartition("/")[0] for t, d in zip(batch, deleted_flags, strict=True) if d
        )

    publish()
    if log_evictions and catalog is not None:
        for (namespace, reason), tally in log.items():
            catalog.log_eviction(now, namespace, str(reason), tally.files, tally.bytes)
    if reclaim_dirs and not isinstance(remover, CatalogOnly):
        result.dirs_removed += reclaim_empty_dirs(root, result.emptied_dirs)[0]
        result.emptied_dirs.clear()
    result.duration_s = time.monotonic() - start
    return result


def delete_corrupt(
    root: str | os.PathLike[str], catalog: Catalog | None, corrupt: Sequence[tuple[Any, int]]
) -> Result:
    """Remove corrupt block files `(key, size)` through the one delete path (no recheck: proven-bad bytes are
    bad however recently they were read).  Without a catalog only the files go."""
    victims = [Victim(key, size, EvictReason.CORRUPT) for key, size in corrupt]
    by_ns: dict[str, Tally] = {}
    for v in victims:
        by_ns.setdefault(v.key.namespace, Tally()).add(v.size)
    plan = Plan(
        victims=victims,
        temp_files=[],
        by_reason={EvictReason.CORRUPT: Tally(len(victims), sum(v.size for v in victims))},
        by_namespace=by_ns,
        total_files=len(victims),
        total_bytes=sum(v.size for v in victims),
    )
    return execute_plan(root, catalog, plan, dry_run=False)


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


def _unlink_batch(remover: Remover, relpaths: list[str], result: Result) -> tuple[list[bool], list[bool]]:
    """Unlink `relpaths`; per path: (deleted by us, already gone).  Refused or failed paths get both False."""
    stats = remover.unlink_many(relpaths)
    result.missing += stats.missing
    result.refused += stats.refused
    result.errors += stats.errors
    if stats.deleted == len(relpaths):
        return [True] * len(relpaths), [False] * len(relpaths)
    # The remover names every path it did not delete (refused or failed) and every one already gone.
    kept, missing = set(stats.not_deleted), set(stats.missing_paths)
    return (
        [rel not in kept and rel not in missing for rel in relpaths],
        [rel in missing for rel in relpaths],
    )
