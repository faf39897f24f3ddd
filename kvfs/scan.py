"""Reconcile the catalog with the tree: a parallel walk that upserts every block and drops vanished ones.

The walk lists the namespace directories, then hands each `<ns>[_r<rank>]/<hhh>` bucket to a thread pool
(`os.scandir` and `lstat` release the GIL, and on a network filesystem the walk is latency-bound, so threads
overlap round trips).  Nothing is followed through a symlink: `DirEntry.is_dir/is_file(follow_symlinks=False)`
and `DirEntry.stat(follow_symlinks=False)` (an lstat) only.  Blocks are upserted in batches tagged with the
scan's start time (`seen`); afterwards rows not seen and created before the scan started are dropped
(`Catalog.prune_missing`), so blocks journaled while the walk ran survive.  Namespaces whose walk hit an
I/O error keep all their rows.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import click

from kvfs import metrics
from kvfs.catalog import BlockRow, Catalog
from kvfs.layout import (
    CONFIG_FILENAME,
    META_DIRNAME,
    BlockKey,
    fingerprint_sha256,
    is_temp_name,
    namespace_name,
    parse_namespace_dir,
    read_namespace_config,
)

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
DEFAULT_BATCH = 10_000
# Rows created less than this long before the scan started are never pruned: absorbs clock skew between
# the writers' hosts (journal times) and this one.
DEFAULT_PRUNE_GRACE_S = 60.0

_BUCKET1_RE = re.compile(r"[0-9a-f]{3}")
_BUCKET2_RE = re.compile(r"([0-9a-f]{2})_g(\d+)")
_HEX_RE = re.compile(r"[0-9a-f]{16,128}")
_EXTS = {"kvfs": "kvfs", "bin": "bin"}


class ScanError(Exception):
    """The root cannot be scanned at all (missing, not a directory, unreadable)."""


@dataclass(frozen=True, slots=True)
class OrphanInfo:
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
    tmp_orphans: list[OrphanInfo]
    duration_s: float
    errors: int = 0
    namespaces: int = 0


@dataclass(slots=True)
class WalkBatch:
    """What one bucket (`<ns>[_r<rank>]/<hhh>`) or one namespace directory's own level held."""

    blocks: list[BlockRow] = field(default_factory=list)
    orphans: list[OrphanInfo] = field(default_factory=list)
    not_blocks: int = 0
    errors: int = 0
    incomplete: set[str] = field(default_factory=set)  # namespaces whose walk hit an error here


def _orphan(relpath: str, entry: os.DirEntry[str]) -> OrphanInfo | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # renamed into place or removed since readdir
    return OrphanInfo(relpath, st.st_size, st.st_mtime)


def _scan_bucket(root: str, rank_dir: str, namespace: str, rank: int | None, bucket: str) -> WalkBatch:
    """Walk `<rank_dir>/<bucket>/<hh>_g<group>/<hash>.<ext>`; everything unexpected is counted, not followed."""
    out = WalkBatch()
    rel1 = f"{rank_dir}/{bucket}"
    blocks = out.blocks
    try:
        level1 = list(os.scandir(f"{root}/{rel1}"))
    except FileNotFoundError:
        return out  # removed while we walked: its blocks are gone
    except OSError as exc:
        log.warning("scan: cannot read %s: %s", rel1, exc.strerror)
        out.errors += 1
        out.incomplete.add(namespace)
        return out
    for sub in level1:
        name2 = sub.name
        if is_temp_name(name2):
            if orphan := _orphan(f"{rel1}/{name2}", sub):
                out.orphans.append(orphan)
            continue
        m2 = _BUCKET2_RE.fullmatch(name2)
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
            out.errors += 1
            out.incomplete.add(namespace)
            continue
        with leaves:
            for entry in leaves:
                name = entry.name
                stem, dot, ext = name.rpartition(".")
                fmt = _EXTS.get(ext)
                if fmt is None or not dot or not stem.startswith(prefix) or _HEX_RE.fullmatch(stem) is None:
                    if is_temp_name(name):
                        if orphan := _orphan(f"{rel2}/{name}", entry):
                            out.orphans.append(orphan)
                    else:
                        out.not_blocks += 1
                    continue
                if not entry.is_file(follow_symlinks=False):
                    out.not_blocks += 1  # a symlink or directory named like a block is not one
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("scan: cannot stat %s/%s: %s", rel2, name, exc.strerror)
                    out.errors += 1
                    out.incomplete.add(namespace)
                    continue
                mtime = st.st_mtime
                atime = st.st_atime
                blocks.append(
                    BlockRow(
                        BlockKey(namespace, rank, group, stem, fmt),  # type: ignore[arg-type]
                        st.st_size,
                        mtime,
                        atime if atime > mtime else mtime,
                    )
                )
    return out


@dataclass(slots=True)
class _NamespaceDir:
    name: str  # directory name: `<ns>` or `<ns>_r<rank>`
    namespace: str
    rank: int | None
    buckets: list[str]


def _list_root(root: str) -> tuple[list[_NamespaceDir], WalkBatch]:
    """Namespace directories and their buckets; the top levels' own temp files and stray entries."""
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
        ns_dir = _NamespaceDir(entry.name, namespace, rank, [])
        try:
            children = list(os.scandir(entry.path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("scan: cannot read %s: %s", entry.name, exc.strerror)
            top.errors += 1
            top.incomplete.add(namespace)
            continue
        for child in children:
            if is_temp_name(child.name):
                if orphan := _orphan(f"{entry.name}/{child.name}", child):
                    top.orphans.append(orphan)
            elif _BUCKET1_RE.fullmatch(child.name) and child.is_dir(follow_symlinks=False):
                ns_dir.buckets.append(child.name)
            elif not (child.name == CONFIG_FILENAME and rank is None):
                top.not_blocks += 1
        dirs.append(ns_dir)
    return dirs, top


def walk_tree(
    root: str | os.PathLike[str],
    *,
    threads: int = DEFAULT_THREADS,
    on_bucket: Callable[[int, int], None] | None = None,
) -> Iterator[WalkBatch]:
    """Yield one WalkBatch per bucket (plus one for the top levels), buckets walked by `threads` threads.

    The first batch carries the namespaces' own level; `on_bucket(done, total)` reports progress.
    """
    root_s = os.fspath(root)
    dirs, top = _list_root(root_s)
    yield top
    tasks = [(d.name, d.namespace, d.rank, b) for d in dirs for b in d.buckets]
    total = len(tasks)
    done = 0
    if on_bucket:
        on_bucket(0, total)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kvfs-scan") as pool:
        pending: set[Future[WalkBatch]] = set()
        it = iter(tasks)
        # Bounded submission: at most a few tasks per thread in flight, so results do not pile up in memory.
        window = max(4, threads * 4)
        for task in it:
            pending.add(pool.submit(_scan_bucket, root_s, *task))
            if len(pending) >= window:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_scan_bucket, root_s, *nxt))
                done += 1
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


def _register_namespaces(root: str, catalog: Catalog, names: set[str]) -> None:
    for ns in sorted(names):
        fields = read_namespace_config(root, ns)
        model = fingerprint = fmt = None
        if fields is not None and "model_name" in fields:
            try:
                matches = namespace_name(fields) == ns
            except (TypeError, ValueError):
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
            self.bar.__exit__(None, None, None)
            self.bar = None


def scan_tree(
    root: str | os.PathLike[str],
    catalog: Catalog,
    *,
    threads: int = DEFAULT_THREADS,
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH,
    prune: bool = True,
    prune_grace: float = DEFAULT_PRUNE_GRACE_S,
) -> ScanResult:
    """Walk `root`, upsert every block into `catalog`, drop rows of vanished files, list temp orphans.

    Blocks seen for the first time get created = mtime and last_access = max(atime, mtime); known blocks
    keep their journaled recency unless the file's atime is newer.
    """
    root_s = os.fspath(Path(root))
    started = time.time()
    t0 = time.perf_counter()
    before = catalog.block_count()
    bar = _Progress(progress)
    files = nbytes = not_blocks = errors = 0
    orphans: list[OrphanInfo] = []
    incomplete: set[str] = set()
    pending: list[BlockRow] = []
    names = set(namespaces_in(root_s))
    _register_namespaces(root_s, catalog, names)
    try:
        for batch in walk_tree(root_s, threads=threads, on_bucket=bar):
            not_blocks += batch.not_blocks
            orphans.extend(batch.orphans)
            errors += batch.errors
            incomplete |= batch.incomplete
            if batch.blocks:
                files += len(batch.blocks)
                nbytes += sum(row.size for row in batch.blocks)
                bar.files = files
                pending.extend(batch.blocks)
                if len(pending) >= batch_size:
                    catalog.upsert_blocks(pending, seen=started)
                    pending = []
        if pending:
            catalog.upsert_blocks(pending, seen=started)
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
        tmp_orphans=orphans,
        duration_s=duration,
        errors=errors,
        namespaces=len(names),
    )
