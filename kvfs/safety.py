"""Root-confined deletion: never leave the root, never follow a symlink.

Every deletion walks from a descriptor of the root, one path component at a time, opening each directory with
`O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, and finally `unlinkat(dir_fd, name)` after an
`lstat` shows a regular file.  A symlink anywhere in the path (planted, or swapped in by a concurrent rename)
stops the walk: the path is refused and counted, its target untouched.  `unlinkat` itself never follows a
symlink, so even a file swapped for a symlink between the `lstat` and the unlink only loses the link.

What descriptors cannot prevent: a directory moved out of the root *after* it was opened is still the directory
that was opened; deleting a block file in it is what the caller asked for, and no symlink is ever followed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import stat
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from kvfs import metrics

log = logging.getLogger(__name__)

_O_PATH: Final = getattr(os, "O_PATH", 0)
_DIR_FLAGS: Final = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_MAX_CACHED_DIRS: Final = 4096
# One thread by default: on a local disk the per-file work is CPU-bound and threads only contend for the GIL
# (tools.bench.unlink); on a network filesystem, where each unlink is a round trip, pass workers=8..16.
DEFAULT_WORKERS: Final = 1
_MIN_PATHS_PER_WORKER: Final = 64  # below this, thread start-up costs more than it saves


def _max_cached_dirs() -> int:
    """Cached directory descriptors per thread: at most 4096, and a small share of the descriptor limit."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        return _MAX_CACHED_DIRS
    return max(8, min(_MAX_CACHED_DIRS, soft // (4 * DEFAULT_WORKERS)))


_BAD_NAMES: Final = frozenset(("", ".", ".."))


class UnsafePath(Exception):
    """A path the guard refuses to touch; `reason` is the metric label."""

    def __init__(self, relpath: str, reason: str) -> None:
        super().__init__(f"refused {relpath!r}: {reason}")
        self.relpath = relpath
        self.reason = reason


@dataclass(slots=True)
class UnlinkStats:
    deleted: int = 0
    missing: int = 0
    refused: int = 0
    errors: int = 0
    # Paths that still exist because they were refused or failed (their catalog rows should stay).
    not_deleted: list[str] = field(default_factory=list)
    # Paths that were already gone (deleted by someone else): their rows can go, but they were not evicted now.
    missing_paths: list[str] = field(default_factory=list)
    # The first failure and the first refusal of the batch, for its one log line each (a hostile or broken
    # tree can fail every file: one line per file would flood the log).
    first_error: str | None = None
    first_refusal: str | None = None


def check_relpath(relpath: str) -> list[str]:
    """Split a root-relative path into components, refusing absolute paths, `..`, `.`, empty parts and NUL."""
    if not isinstance(relpath, str) or not relpath:
        raise UnsafePath(str(relpath), "malformed")
    if relpath.startswith("/"):
        raise UnsafePath(relpath, "absolute")
    if "\x00" in relpath:
        raise UnsafePath(relpath, "malformed")
    parts = relpath.split("/")
    for part in parts:
        if part == "..":
            raise UnsafePath(relpath, "dotdot")
        if part in _BAD_NAMES:
            raise UnsafePath(relpath, "malformed")
    return parts


class RootGuard:
    """Deletes files under `root` only, through directory descriptors, never following symlinks.

    The root itself is resolved when each call starts (it may be a symlink to the mount, as configured).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    # -- single operations --

    def unlink(self, relpath: str) -> bool:
        """Delete one regular file; False (counted) when refused, already gone or failing."""
        return self.unlink_many((relpath,)).deleted == 1

    def rmdir_empty_parents(self, relpath: str, stop_at_depth: int = 1) -> int:
        """Remove the now-empty directories above the file `relpath`, deepest first; keep those at depth <=
        stop_at_depth (depth 1, the namespace directory, by default).  See `rmdir_empty`."""
        try:
            check_relpath(relpath)
        except UnsafePath as exc:
            self._refused(exc.relpath, exc.reason)
            return 0
        return self.rmdir_empty([relpath.rpartition("/")[0]], keep_depth=stop_at_depth)

    def rmdir_empty(
        self,
        dir_relpaths: Iterable[str],
        *,
        keep_depth: int = 1,
        changed_before: float | None = None,
        young: set[str] | None = None,
    ) -> int:
        """Remove each directory if it is empty, then its parents while they are; never a directory at depth <=
        `keep_depth` (1: the namespace directories, which hold config.json) nor the root.  Returns how many
        were removed.  With `changed_before`, a directory whose mtime (its last entry added or removed) is later
        is left and added to `young`, for a later try: a writer that has just created it (and has yet to open
        its temp file there) keeps it, whether or not it would retry after ENOENT (stock writers do not).

        Safe against writers: `rmdir` removes only an empty directory, atomically, so one holding a writer's temp
        file stays; a writer between its mkdir and its open gets ENOENT and creates the directory again
        (`kvfs.blockfile`).  `unlinkat(AT_REMOVEDIR)` never follows a symlink (ENOTDIR), and parents are opened
        like `unlink_many`'s, refusing symlinks.  A non-empty or vanished directory is simply left.
        """
        pending: set[str] = set()
        for rel in dir_relpaths:
            if not rel:
                continue  # the root itself
            try:
                parts = check_relpath(rel)
            except UnsafePath as exc:
                self._refused(exc.relpath, exc.reason)
                continue
            if len(parts) > keep_depth:
                pending.add(rel)
        if not pending:
            return 0
        removed = 0
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.warning("cannot open root %s to remove empty directories: %s", self.root, exc)
            return 0
        dir_fds: dict[str, int] = {"": root_fd}
        max_cached = _max_cached_dirs()
        try:
            while pending:
                # Deepest first: a parent is tried only after every child of it in this call.
                depth = max(rel.count("/") for rel in pending)
                level = sorted(rel for rel in pending if rel.count("/") == depth)
                pending.difference_update(level)
                for rel in level:
                    parent_rel, _, name = rel.rpartition("/")
                    try:
                        fd = dir_fds.get(parent_rel)
                        if fd is None:
                            if len(dir_fds) > max_cached:
                                _close_cached(dir_fds, root_fd)
                            fd = _open_beneath(parent_rel, root_fd) if parent_rel else root_fd
                            if fd < 0:
                                fd = _open_dir(rel, parent_rel, dir_fds)
                            else:
                                dir_fds[parent_rel] = fd
                        if changed_before is not None:
                            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                            if not stat.S_ISDIR(st.st_mode):
                                continue
                            if st.st_mtime > changed_before:  # our own rmdir of a child counts too
                                if young is not None:
                                    young.add(rel)
                                continue
                        os.rmdir(name, dir_fd=fd)
                    except UnsafePath:
                        continue  # a symlink on the way: its files were refused (and counted) by the unlink
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                            log.debug("cannot remove directory %s under %s: %s", rel, self.root, exc)
                        continue
                    removed += 1
                    if parent_rel.count("/") + 1 > keep_depth:
                        pending.add(parent_rel)
        finally:
            _close_cached(dir_fds, root_fd)
            os.close(root_fd)
        if removed:
            metrics.DIRS_REMOVED.inc(removed)
        return removed

    # -- batches --

    def unlink_many(self, relpaths: Iterable[str], *, workers: int = DEFAULT_WORKERS) -> UnlinkStats:
        """Delete many files, reusing directory descriptors across the batch (one walk per directory).

        Directories are opened with one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has
        it (else component by component).  With `workers` > 1, large batches are spread over threads (the
        syscalls release the GIL): worth it on a network filesystem, where every unlink is a round trip; paths
        are split by bucket directory so each thread keeps its own descriptor cache warm.
        """
        paths = list(relpaths)
        stats = UnlinkStats()
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.error("cannot open root %s: %s", self.root, exc)
            stats.errors = len(paths)
            stats.not_deleted.extend(paths)
            metrics.UNLINKS.labels(result="error").inc(stats.errors)
            return stats
        try:
            workers = max(1, min(workers, len(paths) // _MIN_PATHS_PER_WORKER))
            if workers == 1:
                self._unlink_with(root_fd, paths, stats)
            else:
                shards: list[list[str]] = [[] for _ in range(workers)]
                for rel in paths:
                    shards[hash(rel.rsplit("/", 2)[0]) % workers].append(rel)
                parts = [UnlinkStats() for _ in shards]
                threads = [
                    threading.Thread(target=self._unlink_with, args=(root_fd, shard, part), daemon=True)
                    for shard, part in zip(shards, parts, strict=True)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for part in parts:
                    stats.deleted += part.deleted
                    stats.missing += part.missing
                    stats.refused += part.refused
                    stats.errors += part.errors
                    stats.not_deleted.extend(part.not_deleted)
                    stats.missing_paths.extend(part.missing_paths)
                    stats.first_error = stats.first_error or part.first_error
                    stats.first_refusal = stats.first_refusal or part.first_refusal
        finally:
            os.close(root_fd)
        if stats.errors:
            log.warning(
                "cannot delete %d files under %s (first: %s)", stats.errors, self.root, stats.first_error
            )
        if stats.refused:
            log.warning(
                "refused to delete %d paths under %s (first: %s)",
                stats.refused,
                self.root,
                stats.first_refusal,
            )
        for result, count in (
            ("deleted", stats.deleted),
            ("missing", stats.missing),
            ("error", stats.errors),
        ):
            if count:
                metrics.UNLINKS.labels(result=result).inc(count)
        return stats

    def _unlink_with(self, root_fd: int, relpaths: list[str], stats: UnlinkStats) -> None:
        """The per-thread loop: its own directory-descriptor cache, the shared (read-only) root descriptor."""
        dir_fds: dict[str, int] = {"": root_fd}
        lstat = os.stat
        unlink = os.unlink
        is_reg = stat.S_ISREG
        max_cached = _max_cached_dirs()
        try:
            for rel in relpaths:
                dir_rel, _, name = rel.rpartition("/")
                fd = dir_fds.get(dir_rel)
                try:
                    if rel[:1] == "/" or name in _BAD_NAMES or "\x00" in name:
                        check_relpath(rel)  # raises UnsafePath with the precise reason
                    if fd is None:
                        fd = _cached_dir_fd(rel, dir_rel, dir_fds, root_fd, max_cached)
                    st = lstat(name, dir_fd=fd, follow_symlinks=False)
                    if not is_reg(st.st_mode):
                        raise UnsafePath(rel, "symlink" if stat.S_ISLNK(st.st_mode) else "not_regular_file")
                    unlink(name, dir_fd=fd)
                    stats.deleted += 1
                except UnsafePath as exc:
                    self._refused(rel, exc.reason, stats)
                    stats.refused += 1
                    stats.not_deleted.append(rel)
                except FileNotFoundError:
                    stats.missing += 1
                    stats.missing_paths.append(rel)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        reason = "symlink" if exc.errno == errno.ELOOP else "not_a_directory"
                        self._refused(rel, reason, stats)
                        stats.refused += 1
                    else:
                        if exc.errno == errno.EMFILE:  # out of descriptors: drop the cache for the next path
                            _close_cached(dir_fds, root_fd)
                        if stats.first_error is None:
                            stats.first_error = f"{rel}: {exc.strerror or exc}"
                        stats.errors += 1
                    stats.not_deleted.append(rel)
        finally:
            _close_cached(dir_fds, root_fd)

    def lstat_many(self, relpaths: Iterable[str]) -> list[os.stat_result | None]:
        """lstat of each path, walked like `unlink_many` (root-confined, no symlink followed anywhere); None
        where the path is missing, unsafe, unreadable or not a regular file.  Directory descriptors are reused
        across the batch, so the cost is about one syscall per file."""
        paths = list(relpaths)
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.warning("cannot open root %s: %s", self.root, exc)
            return [None] * len(paths)
        dir_fds: dict[str, int] = {"": root_fd}
        missing_dirs: set[str] = set()
        max_cached = _max_cached_dirs()
        out: list[os.stat_result | None] = []
        append = out.append
        lstat = os.stat
        is_reg = stat.S_ISREG
        fn = _openat2_fn()
        if fn is not None:
            # One openat2(O_PATH, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) + fstat per file: the kernel refuses
            # every symlink and escape, with no per-directory descriptor (blocks spread over ~1M buckets).
            how_ref = _openat2_state["file_how_ref"]
            fstat, close = os.fstat, os.close
            try:
                for rel in paths:
                    fd = (
                        -1
                        if "\x00" in rel
                        else fn(_SYS_OPENAT2, root_fd, rel.encode(), how_ref, _OPEN_HOW_SIZE)
                    )  # type: ignore[operator]
                    if fd < 0:
                        append(None)
                        continue
                    try:
                        st = fstat(fd)
                    except OSError:
                        st = None
                    finally:
                        close(fd)
                    append(st if st is not None and is_reg(st.st_mode) else None)
            finally:
                os.close(root_fd)
            return out
        try:
            for rel in paths:
                dir_rel, _, name = rel.rpartition("/")
                fd = dir_fds.get(dir_rel)
                try:
                    if rel[:1] == "/" or name in _BAD_NAMES or "\x00" in name:
                        check_relpath(rel)
                    if fd is None:
                        if dir_rel in missing_dirs:
                            append(None)
                            continue
                        try:
                            fd = _cached_dir_fd(rel, dir_rel, dir_fds, root_fd, max_cached)
                        except FileNotFoundError:
                            missing_dirs.add(dir_rel)
                            raise
                    st = lstat(name, dir_fd=fd, follow_symlinks=False)
                    append(st if is_reg(st.st_mode) else None)
                except (UnsafePath, OSError):
                    append(None)
        finally:
            _close_cached(dir_fds, root_fd)
            os.close(root_fd)
        return out

    def _refused(self, relpath: str, reason: str, stats: UnlinkStats | None = None) -> None:
        """Count a refused path; a batch (`stats`) logs its first refusal once, a single operation logs now."""
        metrics.UNSAFE_PATHS_REFUSED.labels(reason=reason).inc()
        metrics.UNLINKS.labels(result="refused").inc()
        if stats is None:
            log.warning("refused to delete %r under %s: %s", relpath, self.root, reason)
        elif stats.first_refusal is None:
            stats.first_refusal = f"{relpath!r}: {reason}"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2: Final = 437  # the same number on every Linux architecture (unified syscall table)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_NO_SYMLINKS: Final = 0x04
_RESOLVE_BENEATH: Final = 0x08
_openat2_state: dict[str, object] = {}
_OPEN_HOW_SIZE: Final = ctypes.sizeof(_OpenHow)


def _openat2_fn() -> object | None:
    """libc `syscall` bound for openat2, or None where it is unavailable (not Linux, kernel < 5.6, seccomp)."""
    if "fn" not in _openat2_state:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.syscall
                fn.restype = ctypes.c_long
                how = _OpenHow(
                    _DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
                )
                fd = fn(
                    _SYS_OPENAT2, ctypes.c_int(-100), b".", ctypes.byref(how), ctypes.sizeof(how)
                )  # AT_FDCWD
                if fd < 0:
                    fn = None
                else:
                    os.close(fd)
            except (OSError, AttributeError):
                fn = None
        how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        _openat2_state["how"] = how  # keeps the structure alive for the reference below
        _openat2_state["how_ref"] = ctypes.byref(how)
        file_how = _OpenHow(
            _O_PATH | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0,
            _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
        )
        _openat2_state["file_how"] = file_how
        _openat2_state["file_how_ref"] = ctypes.byref(file_how)
        _openat2_state["fn"] = fn
    return _openat2_state["fn"]


def _open_beneath(dir_rel: str, root_fd: int) -> int:
    """One `openat2(root_fd, dir_rel, O_PATH|O_DIRECTORY|O_NOFOLLOW, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`: the
    kernel walks every component refusing symlinks and escapes, in one syscall instead of one per component.
    -1 when openat2 is unavailable or refuses, or the path has an unusual shape (the caller then walks component
    by component, which also classifies any refusal)."""
    fn = _openat2_fn()
    # A conservative filter: "." / ".." / empty components, NUL, trailing "/" all take the careful walk.
    if fn is None or "/." in "/" + dir_rel or "//" in dir_rel or dir_rel.endswith("/") or "\x00" in dir_rel:
        return -1
    fd = fn(_SYS_OPENAT2, root_fd, dir_rel.encode(), _openat2_state["how_ref"], _OPEN_HOW_SIZE)  # type: ignore[operator]
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            raise FileNotFoundError(err, os.strerror(err), dir_rel)
        if err == errno.EMFILE:
            raise OSError(err, os.strerror(err), dir_rel)
        return -1
    return int(fd)


def _open_dir(rel: str, dir_rel: str, dir_fds: dict[str, int]) -> int:
    """Descriptor of `dir_rel` (no leading "/"): its parent's from the cache (or opened the same way), then one
    `openat(parent, leaf, O_NOFOLLOW | O_DIRECTORY)`.  Every component is checked as it is opened."""
    parent_rel, _, leaf = dir_rel.rpartition("/")
    parent = dir_fds.get(parent_rel)
    if parent is None:
        parent = _open_dir(rel, parent_rel, dir_fds)
    if leaf in _BAD_NAMES or "\x00" in leaf:
        raise UnsafePath(rel, "dotdot" if leaf == ".." else "malformed")
    try:
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            is_link = stat.S_ISLNK(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        raise UnsafePath(rel, "symlink" if is_link else "not_a_directory") from None
    dir_fds[dir_rel] = fd
    return fd


def _cached_dir_fd(rel: str, dir_rel: str, dir_fds: dict[str, int], root_fd: int, max_cached: int) -> int:
    """A descriptor of `rel`'s directory `dir_rel` beneath the root, opened and kept in `dir_fds` (the cache is
    emptied first when full): openat2 beneath the root, or, without it or when it refuses, the component walk,
    which says precisely why.  Raises UnsafePath or OSError as that walk does."""
    if len(dir_fds) > max_cached:
        _close_cached(dir_fds, root_fd)
    fd = _open_beneath(dir_rel, root_fd) if dir_rel else root_fd
    if fd < 0:
        return _open_dir(rel, dir_rel, dir_fds)
    dir_fds[dir_rel] = fd
    return fd


def _close_cached(dir_fds: dict[str, int], root_fd: int) -> None:
    for fd in dir_fds.values():
        if fd != root_fd:
            os.close(fd)
    dir_fds.clear()
    dir_fds[""] = root_fd
