"""Reconcile the catalog with the tree: a parallel walk that upserts every block and drops vanished ones.

The walk lists the namespace directories, then hands groups of `<ns>[_r<rank>]/<hhh>` buckets to a thread
pool on network filesystems (there the walk is latency-bound and `os.scandir`/`lstat` release the GIL, so
threads overlap round trips); on a local disk one thread is fastest.  Nothing is followed through a symlink: `DirEntry.is_dir/is_file(follow_symlinks=False)`
and `DirEntry.stat(follow_symlinks=False)` (an lstat) only.  Blocks are upserted in batches tagged with the
scan's start time (`seen`); afterwards rows not seen and created before the scan started are dropped
(`Catalog.prune_missing`), so blocks journaled while the walk ran survive.  Namespaces whose walk hit an
I/O error keep all their rows.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import click

from kvfs import metrics
from kvfs.catalog import BlockRow, Catalog
from kvfs.catalog.engine import NETWORK_FILESYSTEMS, filesystem_type
from kvfs.fsusage import allocated_bytes
from kvfs.layout import (
    BLOCK_EXTS,
    BUCKET1_RE,
    BUCKET2_RE,
    CONFIG_FILENAME,
    HASH_RE,
    META_DIRNAME,
    BlockKey,
    fingerprint_sha256,
    is_temp_name,
    namespace_name,
    parse_namespace_dir,
    read_namespace_config,
)

log = logging.getLogger(__name__)

# Local disks: one thread.  readdir/lstat of a cached tree take microseconds, so threads only add GIL
# hand-offs (measured by tools/bench/scan.py: 2 threads ran at ~0.6x the speed of 1).  Network filesystems:
# each lstat is a round trip, and threads overlap them.
LOCAL_THREADS = 1
NETWORK_THREADS = 16
DEFAULT_BATCH = 10_000
# Rows created less than this long before the scan started are never pruned: absorbs clock skew between
# the writers' hosts (journal times) and this one.
DEFAULT_PRUNE_GRACE_S = 60.0

_S_IFMT = stat.S_IFMT(0o177777)
_S_IFREG = stat.S_IFREG


class ScanError(Exception):
    """The root cannot be scanned at all (missing, not a directory, unreadable)."""


@dataclass(frozen=True, slots=True)
class TempFile:
    """A writer's temp file (`*.tmp`) found under a namespace directory; relpath is relative to the root."""

    relpath: str
    size: int
    mtime: float


@dataclass(slots=True)
class ScanResult:
    files: int
    bytes: int
    blocks_added: int
    blocks_removed: int
    not_blocks: int
    temp_files: list[TempFile]
    duration_s: float
    errors: int = 0
    namespaces: int = 0


# One block found by the walk: (group, block_hash, fmt, size, created = mtime, last_access = max(atime, mtime)).
# Plain tuples, not BlockKey/BlockRow objects: building those cost more than the lstat on a local disk.
FoundBlock = tuple[int, str, str, int, float, float]


@dataclass(slots=True)
class WalkBatch:
    """What some buckets of one namespace directory (`<ns>[_r<rank>]`), or the top levels, held."""

    namespace: str | None = None
    rank: int | None = None
    found: list[FoundBlock] = field(default_factory=list)
    orphans: list[TempFile] = field(default_factory=list)
    not_blocks: int = 0
    errors: int = 0
    incomplete: set[str] = field(default_factory=set)  # namespaces whose walk hit an error here
    unreadable: list[str] = field(default_factory=list)  # directories that could not be listed (relpaths)

    @property
    def blocks(self) -> list[BlockRow]:
        assert self.namespace is not None or not self.found
        ns, rank = self.namespace or "", self.rank
        return [
            BlockRow(BlockKey(ns, rank, g, h, f), size, created, last)  # type: ignore[arg-type]
            for g, h, f, size, created, last in self.found
        ]


def _orphan(relpath: str, entry: os.DirEntry[str]) -> TempFile | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # renamed into place or removed since readdir
    return TempFile(relpath, st.st_size, st.st_mtime)


def _scan_bucket(root: str, rank_dir: str, namespace: str, rank: int | None, bucket: str) -> WalkBatch:
    """Walk `<rank_dir>/<bucket>/<hh>_g<group>/<hash>.<ext>`; everything unexpected is counted, not followed."""
    out = WalkBatch(namespace, rank)
    rel1 = f"{rank_dir}/{bucket}"
    found = out.found
    try:
        level1 = list(os.scandir(f"{root}/{rel1}"))
    except FileNotFoundError:
        return out  # removed while we walked: its blocks are gone
    except OSError as exc:
        log.warning("scan: cannot read %s: %s", rel1, exc.strerror)
        out.unreadable.append(rel1)
        out.errors += 1
        out.incomplete.add(namespace)
        return out
    for sub in level1:
        name2 = sub.name
        if is_temp_name(name2):
            if orphan := _orphan(f"{rel1}/{name2}", sub):
                out.orphans.append(orphan)
            continue
        m2 = BUCKET2_RE.fullmatch(name2)
        if m2 is None or not sub.is_dir(follow_symlinks=False):
            out.not_blocks += 1
            continue
        prefix = bucket + m2[1]
        group = int(m2[2])
        rel2 = f"{rel1}/{name2}"
        try:
            leaves = os.scandir(f"{root}/{rel2}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("scan: cannot read %s: %s", rel2, exc.strerror)
            out.unreadable.append(rel2)
            out.errors += 1
            out.incomplete.add(namespace)
            continue
        with leaves:
            for entry in leaves:
                name = entry.name
                stem, dot, ext = name.rpartition(".")
                fmt = BLOCK_EXTS.get(ext)
                if fmt is None or not dot or not stem.startswith(prefix) or HASH_RE.fullmatch(stem) is None:
                    if is_temp_name(name):
                        if orphan := _orphan(f"{rel2}/{name}", entry):
                            out.orphans.append(orphan)
                    else:
                        out.not_blocks += 1
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)  # lstat: a symlink is reported as one
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("scan: cannot stat %s/%s: %s", rel2, name, exc.strerror)
                    out.errors += 1
                    out.incomplete.add(namespace)
                    continue
                if st.st_mode & _S_IFMT != _S_IFREG:
                    out.not_blocks += 1  # a symlink or directory named like a block is not one
                    continue
                mtime = st.st_mtime
                atime = st.st_atime
                found.append(
                    (group, stem, fmt, allocated_bytes(st), mtime, atime if atime > mtime else mtime)
                )
    return out


@dataclass(slots=True)
class _NamespaceDir:
    name: str  # directory name: `<ns>` or `<ns>_r<rank>`
    namespace: str
    rank: int | None
    buckets: list[str]


def _list_root(root: str, only: str | None = None) -> tuple[list[_NamespaceDir], WalkBatch]:
    """Namespace directories (of namespace `only`, or all) and their buckets; the top levels' own temp files
    and stray entries."""
    top = WalkBatch()
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError as exc:
        raise ScanError(f"kvfs root {root} does not exist") from exc
    except NotADirectoryError as exc:
        raise ScanError(f"kvfs root {root} is not a directory") from exc
    except OSError as exc:
        raise ScanError(f"cannot read kvfs root {root}: {exc.strerror}") from exc
    dirs: list[_NamespaceDir] = []
    for entry in entries:
        if entry.name == META_DIRNAME:
            continue
        parsed = parse_namespace_dir(entry.name)
        if parsed is None or not entry.is_dir(follow_symlinks=False):
            top.not_blocks += 1
            continue
        namespace, rank = parsed
        if only is not None and namespace != only:
            continue
        ns_dir = _NamespaceDir(entry.name, namespace, rank, [])
        try:
            children = list(os.scandir(entry.path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("scan: cannot read %s: %s", entry.name, exc.strerror)
            top.unreadable.append(entry.name)
            top.errors += 1
            top.incomplete.add(namespace)
            continue
        for child in children:
            if is_temp_name(child.name):
                if orphan := _orphan(f"{entry.name}/{child.name}", child):
                    top.orphans.append(orphan)
            elif BUCKET1_RE.fullmatch(child.name) and child.is_dir(follow_symlinks=False):
                ns_dir.buckets.append(child.name)
            elif not (child.name == CONFIG_FILENAME and rank is None):
                top.not_blocks += 1
        ns_dir.buckets.sort()  # key order: the catalog's unique index then grows almost sequentially
        dirs.append(ns_dir)
    dirs.sort(key=lambda d: d.name)
    return dirs, top


def _scan_buckets(
    root: str, rank_dir: str, namespace: str, rank: int | None, buckets: list[str]
) -> WalkBatch:
    """Several buckets of one namespace directory as one task (a bucket alone is too little work per task)."""
    out = WalkBatch(namespace, rank)
    for bucket in buckets:
        one = _scan_bucket(root, rank_dir, namespace, rank, bucket)
        out.found += one.found
        out.orphans += one.orphans
        out.not_blocks += one.not_blocks
        out.errors += one.errors
        out.incomplete |= one.incomplete
        out.unreadable += one.unreadable
    return out


def default_threads(root: str | os.PathLike[str]) -> int:
    """Walker threads for `root`: NETWORK_THREADS on a network filesystem, else LOCAL_THREADS."""
    fstype = filesystem_type(os.path.realpath(root))
    return NETWORK_THREADS if fstype in NETWORK_FILESYSTEMS else LOCAL_THREADS


def walk_tree(
    root: str | os.PathLike[str],
    *,
    threads: int | None = None,
    on_bucket: Callable[[int, int], None] | None = None,
    namespace: str | None = None,
) -> Iterator[WalkBatch]:
    """Yield WalkBatches covering the whole tree (or one namespace's directories), bucket groups walked by
    `threads` threads; the one walk of the block tree (scans, `kvfs verify`).

    The first batch carries the namespaces' own level; `on_bucket(done, total)` reports progress in buckets.
    """
    root_s = os.fspath(root)
    dirs, top = _list_root(root_s, namespace)
    yield top
    if threads is None:
        threads = default_threads(root_s)
    total = sum(len(d.buckets) for d in dirs)
    # ~16 tasks per thread, 8..256 buckets each: enough to balance, few enough that scheduling is noise.
    per_task = min(256, max(8, total // (max(1, threads) * 16)))
    tasks = [
        (d.name, d.namespace, d.rank, d.buckets[i : i + per_task])
        for d in dirs
        for i in range(0, len(d.buckets), per_task)
    ]
    done = 0
    if on_bucket:
        on_bucket(0, total)
    if threads <= 1:
        for task in tasks:
            batch = _scan_buckets(root_s, *task)
            done += len(task[3])
            if on_bucket:
                on_bucket(done, total)
            yield batch
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kvfs-scan") as pool:
        it = iter(tasks)
        # Bounded submission (a few tasks per thread in flight), so results never pile up in memory.
        pending: dict[Future[WalkBatch], int] = {}
        for task in islice(it, threads * 2):
            pending[pool.submit(_scan_buckets, root_s, *task)] = len(task[3])
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done += pending.pop(fut)
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(_scan_buckets, root_s, *nxt)] = len(nxt[3])
                if on_bucket:
                    on_bucket(done, total)
                yield fut.result()


def namespaces_in(root: str | os.PathLike[str]) -> dict[str, list[int | None]]:
    """Namespace name → ranks present, from the root's directory names alone."""
    found: dict[str, list[int | None]] = {}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        parsed = parse_namespace_dir(entry.name)
        if parsed and entry.is_dir(follow_symlinks=False):
            found.setdefault(parsed[0], []).append(parsed[1])
    return found


def register_namespaces(root: str, catalog: Catalog, names: set[str]) -> None:
    """Create (or complete) the catalog rows of `names` with model, fingerprint and format from their
    config.json, so a namespace first seen in a journal gets the same model name as a scanned one."""
    for ns in sorted(names):
        fields = read_namespace_config(root, ns)
        model = fingerprint = fmt = None
        if fields is not None and "model_name" in fields:
            try:
                matches = namespace_name(fields) == ns
            except (TypeError, ValueError, RecursionError):
                matches = False
            if matches:
                model = str(fields["model_name"])
                fingerprint = fingerprint_sha256(fields).hex()
                fmt = "kvfs" if "kvfs_format" in fields else "bin"
            else:
                log.warning("scan: %s/%s does not hash to its directory name; ignored", ns, CONFIG_FILENAME)
        catalog.ensure_namespace(ns, model=model, fingerprint=fingerprint, fmt=fmt)


class _Progress:
    """A click progress bar over buckets on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: click.progressbar[int] | None = None  # type: ignore[type-var]
        self.files = 0
        self._shown = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(  # type: ignore[assignment]
                length=total,
                label="scanning",
                file=sys.stderr,
                show_pos=True,
                item_show_func=lambda _: f"{self.files} blocks",
            )
            self.bar.__enter__()  # type: ignore[union-attr]
        self.bar.update(done - self._shown, done)  # type: ignore[union-attr]
        self._shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_progress()  # the last batch was counted after its bucket was reported
            self.bar.__exit__(None, None, None)
            self.bar = None


def scan_tree(
    root: str | os.PathLike[str],
    catalog: Catalog,
    *,
    threads: int | None = None,
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH,
    prune: bool = True,
    prune_grace: float = DEFAULT_PRUNE_GRACE_S,
) -> ScanResult:
    """Walk `root`, upsert every block into `catalog`, drop rows of vanished files, list temp orphans.

    `threads`: walker threads (default: `default_threads(root)`).

    Blocks seen for the first time get created = mtime and last_access = max(atime, mtime); known blocks
    keep their journaled recency unless the file's atime or mtime is newer, and known kvfs blocks keep it
    whatever the file's times (their writers journal every store and read with the request's time).
    """
    root_s = os.fspath(Path(root))
    started = time.time()
    t0 = time.perf_counter()
    before = catalog.block_count()
    bar = _Progress(progress)
    files = nbytes = not_blocks = errors = 0
    orphans: list[TempFile] = []
    incomplete: set[str] = set()
    pending: list[tuple[str, int | None, list[FoundBlock]]] = []
    pending_rows = 0
    names = set(namespaces_in(root_s))
    register_namespaces(root_s, catalog, names)
    try:
        for batch in walk_tree(root_s, threads=threads, on_bucket=bar):
            not_blocks += batch.not_blocks
            orphans.extend(batch.orphans)
            errors += batch.errors
            incomplete |= batch.incomplete
            if batch.found and batch.namespace is not None:
                files += len(batch.found)
                nbytes += sum(f[3] for f in batch.found)
                bar.files = files
                pending.append((batch.namespace, batch.rank, batch.found))
                pending_rows += len(batch.found)
                if pending_rows >= batch_size:
                    catalog.upsert_scanned(pending, seen=started)
                    pending, pending_rows = [], 0
        if pending:
            catalog.upsert_scanned(pending, seen=started)
    finally:
        bar.close()
    added = catalog.block_count() - before
    removed = catalog.prune_missing(started, grace=prune_grace, keep_namespaces=incomplete) if prune else 0
    duration = time.perf_counter() - t0
    metrics.NOT_A_BLOCK.inc(not_blocks)
    metrics.SCAN_FILES.inc(files)
    if errors:
        metrics.SCAN_ERRORS.inc(errors)
    metrics.SCAN_LAST_DURATION.set(duration)
    orphans.sort(key=lambda o: o.relpath)
    return ScanResult(
        files=files,
        bytes=nbytes,
        blocks_added=max(added, 0),
        blocks_removed=removed,
        not_blocks=not_blocks,
        temp_files=orphans,
        duration_s=duration,
        errors=errors,
        namespaces=len(names),
    )
