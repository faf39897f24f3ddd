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

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from kvfs import metrics

log = logging.getLogger(__name__)

_O_PATH: Final = getattr(os, "O_PATH", 0)
_DIR_FLAGS: Final = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_MAX_CACHED_DIRS: Final = 4096
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
        """Remove the now-empty directories above `relpath`, deepest first; keep those at depth <= stop_at_depth.

        Depth 1 is the first component (the namespace directory), so by default namespace directories stay.
        Returns how many directories were removed; stops at the first non-empty (or vanished) one.
        """
        try:
            parts = check_relpath(relpath)
        except UnsafePath as exc:
            self._refused(exc.relpath, exc.reason)
            return 0
        dirs = parts[:-1]
        fds: list[int] = []
        removed = 0
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            fds.append(root_fd)
            for part in dirs[:-1]:  # open every parent of the deepest directory
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            for depth in range(len(dirs), stop_at_depth, -1):
                try:
                    os.rmdir(
                        dirs[depth - 1], dir_fd=fds[depth - 1]
                    )  # unlinkat(AT_REMOVEDIR): no symlink follow
                except OSError:
                    break
                removed += 1
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refused(relpath, "symlink")
        finally:
            for fd in fds:
                os.close(fd)
        return removed

    # -- batches --

    def unlink_many(self, relpaths: Iterable[str]) -> UnlinkStats:
        """Delete many files, reusing directory descriptors across the batch (one walk per directory)."""
        stats = UnlinkStats()
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.error("cannot open root %s: %s", self.root, exc)
            for rel in relpaths:
                stats.errors += 1
                stats.not_deleted.append(rel)
            metrics.UNLINKS.labels(result="error").inc(stats.errors)
            return stats
        dir_fds: dict[str, int] = {"": root_fd}
        lstat = os.stat
        unlink = os.unlink
        is_reg = stat.S_ISREG
        try:
            for rel in relpaths:
                dir_rel, _, name = rel.rpartition("/")
                fd = dir_fds.get(dir_rel)
                try:
                    if fd is None or rel[:1] == "/" or name in _BAD_NAMES or "\x00" in name:
                        check_relpath(rel)  # raises UnsafePath for every malformed shape
                        if len(dir_fds) > _MAX_CACHED_DIRS:
                            _close_cached(dir_fds, root_fd)
                        fd = _open_dir_chain(rel, dir_rel, dir_fds)
                    st = lstat(name, dir_fd=fd, follow_symlinks=False)
                    if not is_reg(st.st_mode):
                        raise UnsafePath(rel, "symlink" if stat.S_ISLNK(st.st_mode) else "not_regular_file")
                    unlink(name, dir_fd=fd)
                    stats.deleted += 1
                except UnsafePath as exc:
                    self._refused(rel, exc.reason)
                    stats.refused += 1
                    stats.not_deleted.append(rel)
                except FileNotFoundError:
                    stats.missing += 1
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        reason = "symlink" if exc.errno == errno.ELOOP else "not_a_directory"
                        self._refused(rel, reason)
                        stats.refused += 1
                    else:
                        log.warning("cannot delete %s under %s: %s", rel, self.root, exc)
                        stats.errors += 1
                    stats.not_deleted.append(rel)
        finally:
            _close_cached(dir_fds, root_fd)
            os.close(root_fd)
        for result, count in (
            ("deleted", stats.deleted),
            ("missing", stats.missing),
            ("error", stats.errors),
        ):
            if count:
                metrics.UNLINKS.labels(result=result).inc(count)
        return stats

    def _refused(self, relpath: str, reason: str) -> None:
        metrics.UNSAFE_PATHS_REFUSED.labels(reason=reason).inc()
        metrics.UNLINKS.labels(result="refused").inc()
        log.warning("refused to delete %r under %s: %s", relpath, self.root, reason)


def _open_dir_chain(rel: str, dir_rel: str, dir_fds: dict[str, int]) -> int:
    """Descriptor of `dir_rel`, opening (and caching) each missing prefix with O_NOFOLLOW from its parent."""
    if not dir_rel:
        return dir_fds[""]
    fd = dir_fds[""]
    prefix = ""
    for part in dir_rel.split("/"):
        prefix = f"{prefix}/{part}" if prefix else part
        cached = dir_fds.get(prefix)
        if cached is None:
            try:
                cached = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    is_link = False
                raise UnsafePath(rel, "symlink" if is_link else "not_a_directory") from None
            dir_fds[prefix] = cached
        fd = cached
    return fd


def _close_cached(dir_fds: dict[str, int], root_fd: int) -> None:
    for fd in dir_fds.values():
        if fd != root_fd:
            os.close(fd)
    dir_fds.clear()
    dir_fds[""] = root_fd
