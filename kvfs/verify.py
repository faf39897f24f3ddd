"""Read and check every kvfs block file under the root (`kvfs verify`).

The tree is walked directly (not the catalog), so blocks the catalog has not seen yet are checked too.  Each
`.kvfs` file is read in full and validated by `kvfs.blockfile.check_block_file` (header, payload length and
checksum, and the namespace's fingerprint when its `config.json` is readable).  Stock `.bin` files carry no
header and are only counted.  Reads run on a thread pool: file reads and hashing release the GIL.

Only a file whose bytes were read and proven wrong is corrupt (and deletable with `--delete-corrupt`).  A file
or directory that cannot be read (EACCES, EIO, a FIFO at a block path) proves nothing about its content: it is
reported as unreadable, counted, and never deleted.  Reads use O_NOATIME where allowed, so verifying the tree
does not make every block look recently used to the next scan.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvfs import metrics
from kvfs.blockfile import MissReason, check_block_file
from kvfs.fsusage import allocated_bytes
from kvfs.layout import (
    BlockKey,
    fingerprint_sha256,
    read_namespace_config,
)

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

DEFAULT_THREADS = min(16, (os.cpu_count() or 2) * 4)
_BATCH = 512
# Reasons that say the file could not be read, not that its bytes are wrong: never grounds for deleting it.
UNREADABLE_REASONS = frozenset({MissReason.IO_ERROR, MissReason.NOT_REGULAR})
DIR_UNREADABLE = "dir_unreadable"


@dataclass(frozen=True, slots=True)
class CorruptBlock:
    path: str  # relative to the root
    reason: str  # a kvfs.blockfile.MissReason value
    size: int = 0


@dataclass
class VerifyResult:
    checked: int = 0
    checked_bytes: int = 0
    corrupt: list[CorruptBlock] = field(default_factory=list)
    # Files (reason io_error / not_regular) and directories (dir_unreadable) that could not be read.
    unreadable: list[CorruptBlock] = field(default_factory=list)
    bin_files: int = 0  # stock raw files: no header to check
    deleted: int = 0
    deleted_bytes: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "checked_bytes": self.checked_bytes,
            "corrupt": [{"path": c.path, "reason": c.reason} for c in self.corrupt],
            "unreadable": [{"path": c.path, "reason": c.reason} for c in self.unreadable],
            "bin_files": self.bin_files,
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "duration_s": round(self.duration_s, 3),
        }


DirErrorHandler = Callable[[str, OSError], None]


def iter_block_files(
    root: str | os.PathLike[str],
    namespace: str | None = None,
    on_error: DirErrorHandler | None = None,
) -> Iterator[tuple[str, BlockKey]]:
    """(relpath, key) of every block file under the root (or of one namespace), through the scan's walk
    (`kvfs.scan.walk_tree`: no symlink followed, regular files only).  A directory that cannot be listed is
    passed to `on_error` (relpath, error) and skipped."""
    from kvfs.scan import walk_tree

    for batch in walk_tree(root, threads=1, namespace=namespace):
        if on_error is not None:
            for rel in batch.unreadable:
                on_error(rel, OSError(f"cannot list {rel}"))
        ns, rank = batch.namespace, batch.rank
        if ns is None:
            continue
        for group, block_hash, fmt, *_ in batch.found:
            key = BlockKey(ns, rank, group, block_hash, fmt)  # type: ignore[arg-type]
            yield key.relpath(), key


class _Fingerprints:
    """Expected fingerprint digest per namespace, from its config.json (None: unknown, not checked)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = root
        self.cache: dict[str, bytes | None] = {}

    def get(self, namespace: str) -> bytes | None:
        if namespace not in self.cache:
            fields = read_namespace_config(self.root, namespace)
            self.cache[namespace] = fingerprint_sha256(fields) if fields else None
        return self.cache[namespace]


def verify_tree(
    root: str | os.PathLike[str],
    *,
    namespace: str | None = None,
    threads: int = DEFAULT_THREADS,
    delete_corrupt: bool = False,
    catalog: Catalog | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Check every kvfs block (of one namespace, or all).  With `delete_corrupt`, corrupt files are unlinked
    through `RootGuard`, their catalog rows removed and the deletion logged (reason `corrupt`)."""
    start = time.monotonic()
    result = VerifyResult()
    fingerprints = _Fingerprints(root)
    root_path = Path(root)
    corrupt_keys: list[tuple[str, BlockKey]] = []

    def check(item: tuple[str, BlockKey]) -> tuple[str, BlockKey, MissReason | None, int]:
        rel, key = item
        path = root_path / rel
        reason = check_block_file(path, fingerprints.get(key.namespace))
        try:
            size = allocated_bytes(os.lstat(path))  # what deleting it frees (a sparse file frees little)
        except OSError:
            size = 0
        return rel, key, reason, size

    def unreadable_dir(rel: str, exc: OSError) -> None:
        result.unreadable.append(CorruptBlock(rel, DIR_UNREADABLE))
        metrics.VERIFY_UNREADABLE.labels(DIR_UNREADABLE).inc()

    def batches() -> Iterator[list[tuple[str, BlockKey]]]:
        batch: list[tuple[str, BlockKey]] = []
        for rel, key in iter_block_files(root, namespace, unreadable_dir):
            if key.fmt != "kvfs":
                result.bin_files += 1
                continue
            # Resolve the fingerprint on this thread so config.json is read once per namespace.
            fingerprints.get(key.namespace)
            batch.append((rel, key))
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kvfs-verify") as pool:
        for batch in batches():
            for rel, key, reason, size in pool.map(check, batch):
                if reason is MissReason.MISSING:
                    continue  # deleted since the walk listed it (evicted): nothing to check
                result.checked += 1
                result.checked_bytes += size
                if reason in UNREADABLE_REASONS:
                    result.unreadable.append(CorruptBlock(rel, str(reason), size))
                    metrics.VERIFY_UNREADABLE.labels(str(reason)).inc()
                elif reason is not None:
                    result.corrupt.append(CorruptBlock(rel, str(reason), size))
                    corrupt_keys.append((rel, key))
                    metrics.VERIFY_CORRUPT.labels(str(reason)).inc()
            if progress is not None:
                progress(len(batch))

    if delete_corrupt and result.corrupt:
        _delete_corrupt(root, result, corrupt_keys, catalog)
    result.duration_s = time.monotonic() - start
    return result


def _delete_corrupt(
    root: str | os.PathLike[str],
    result: VerifyResult,
    corrupt_keys: list[tuple[str, BlockKey]],
    catalog: Catalog | None,
) -> None:
    """Through the eviction pass's one delete path (`kvfs.eviction.delete_corrupt`)."""
    from kvfs.eviction import delete_corrupt

    sizes = {c.path: c.size for c in result.corrupt}
    removed = delete_corrupt(root, catalog, [(key, sizes[rel]) for rel, key in corrupt_keys])
    result.deleted += removed.deleted_files
    result.deleted_bytes += removed.deleted_bytes
