"""Watchers: the journal folder (ingest sooner than the fallback timer) and the data tree (writers with no journal).

The tree watcher feeds block files of writers that keep no journal (vLLM's stock fs tier, llm-d: `.bin` files)
into the catalog: upsert on create/move-in, remove on delete/move-out; temp files are tracked as potential
orphans.  A kvfs file's row is its writer's journal's (the request's time, chain position and parent, the S3-FIFO
queue place of a new store): the watcher makes one only for a file still unknown once the journal had time to
arrive (`journal_grace`: a writer killed before its flush), and never changes a journaled row.  (Upserted at
once, a file's row was made before its STORE record in most ingests, with the file's mtime, at the small queue's
head: `adaptive` on `sysprompt` replayed that way through the catalog hit 0.484 against 0.501.)  inotify sees
only this host's writes; on NFS, Lustre or CephFS use `watch=polling`, whose every poll stats the whole tree
(counted in `kvfs_evictor_metadata_ops_total{source="watch"}`).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserverVFS

from evictor import metrics
from kvfs.fsusage import allocated_bytes
from kvfs.journal import MAX_FLUSH_INTERVAL
from kvfs.layout import META_DIRNAME, is_temp_name, parse_block_relpath

if TYPE_CHECKING:
    from kvfs.catalog import Catalog
    from kvfs.scan import TempFile

log = logging.getLogger("kvfs.evictor.watch")


def journal_grace(journal_interval: float) -> float:
    """How long after its event a kvfs file waits before the watcher may make its row: its writer's longest
    flush, the service's ingest interval, and a second for the ingest itself."""
    return MAX_FLUSH_INTERVAL + journal_interval + 1.0


def _counting_stat(path: Any) -> os.stat_result:
    metrics.METADATA_OPS.labels("watch").inc()
    return os.stat(path)


def _counting_scandir(path: Any) -> Any:
    metrics.METADATA_OPS.labels("watch").inc()
    return os.scandir(path)


def make_observer(mode: str, poll_interval: float) -> Any:
    if mode == "polling":
        return PollingObserverVFS(_counting_stat, _counting_scandir, polling_interval=poll_interval)
    return Observer()


_WRITE_EVENTS = frozenset(("created", "modified", "moved", "closed", "deleted"))
# inotify masks without IN_OPEN / IN_ACCESS / IN_CLOSE_NOWRITE: our own reads (scans, journal reads, watchdog's
# re-walk after a queue overflow) must not generate events, or an overflow feeds itself forever.
_TREE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    EventsLostEvent,  # an inotify queue overflow: events no one will see again, so the service scans
]
_JOURNAL_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


class _Trigger(FileSystemEventHandler):
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Only writers' changes: our own reads of a segment (opened / closed_no_write) must not wake us again.
        if not event.is_directory and event.event_type in _WRITE_EVENTS:
            self.callback()


class TempFileTracker:
    """Temp files known from the last scan and the tree watcher, by relpath."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, TempFile] = {}

    def replace_all(self, orphans: list[TempFile]) -> None:
        with self._lock:
            self._items = {o.relpath: o for o in orphans}
            metrics.TEMP_FILES_KNOWN.set(len(self._items))

    def add(self, orphan: TempFile) -> None:
        with self._lock:
            self._items[orphan.relpath] = orphan
            metrics.TEMP_FILES_KNOWN.set(len(self._items))

    def discard(self, relpaths: list[str]) -> None:
        with self._lock:
            for rel in relpaths:
                self._items.pop(rel, None)
            metrics.TEMP_FILES_KNOWN.set(len(self._items))

    def snapshot(self) -> list[TempFile]:
        with self._lock:
            return list(self._items.values())


class _TreeHandler(FileSystemEventHandler):
    """Queues (kind, relpath) for block files and temp files; the service applies them in batches."""

    def __init__(self, root: Path, sink: Callable[[str, str], None], on_lost: Callable[[], None]) -> None:
        self.root = str(root)
        self.sink = sink
        self.on_lost = on_lost

    def _rel(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        rel = os.path.relpath(path, self.root)
        if rel.startswith("..") or rel == META_DIRNAME or rel.startswith(META_DIRNAME + "/"):
            return None
        return rel

    def _emit(self, kind: str, path: str | bytes) -> None:
        rel = self._rel(path)
        if rel is None:
            return
        name = rel.rsplit("/", 1)[-1]
        if is_temp_name(name) or parse_block_relpath(rel) is not None:
            self.sink(kind, rel)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._emit("present", event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._emit("present", event.src_path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._emit("gone", event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._emit("gone", event.src_path)
            self._emit("present", event.dest_path)

    def on_events_lost(self, event: EventsLostEvent) -> None:
        # watchdog has re-added its watches by now; files written meanwhile are in no event, only on disk.
        metrics.TREE_WATCH_OVERFLOWS.inc()
        log.warning("the tree watcher lost events (inotify queue overflow): scanning the tree")
        self.on_lost()


class TreeFeed:
    """Applies queued tree events to the catalog: stat at apply time (the file's state now is what counts).  A
    kvfs file waits `grace` seconds from its latest event, then gets a row only if its journal gave it none."""

    def __init__(
        self, root: Path, catalog: Catalog, orphans: TempFileTracker, grace: float = journal_grace(1.0)
    ) -> None:
        self.root = root
        self.catalog = catalog
        self.orphans = orphans
        self.grace = grace
        self._lock = threading.Lock()
        # One apply at a time (journal loop and pre-delete recheck both call it): a later "gone" must never be
        # overtaken by an earlier "present" for the same path.
        self._apply_lock = threading.Lock()
        # path -> (time of its latest event (monotonic), its kind: "present" or "gone")
        self._pending: dict[str, tuple[float, str]] = {}

    def handler(self, on_lost: Callable[[], None] = lambda: None) -> FileSystemEventHandler:
        """`on_lost`: called when the watcher lost events (a scan must catch up)."""
        return _TreeHandler(self.root, self._queue, on_lost)

    def _queue(self, kind: str, rel: str) -> None:
        with self._lock:
            self._pending.pop(rel, None)  # newest last: the wait counts from the latest event
            self._pending[rel] = (time.monotonic(), kind)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def apply(self) -> int:
        """Apply queued events; on a catalog error they are re-queued (newer events for a path win)."""
        with self._apply_lock:
            return self._apply()

    def _apply(self) -> int:
        from kvfs.catalog import BlockRow
        from kvfs.scan import TempFile

        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows, found, gone, orphan_gone = [], [], [], []
        waiting: dict[str, tuple[float, str]] = {}
        too_new = time.monotonic() - self.grace
        # Past the grace, the event kind no longer matters: the file decides.
        for rel, (queued, kind) in pending.items():
            key = parse_block_relpath(rel)
            if key is not None and key.fmt == "kvfs" and kind == "present" and queued > too_new:
                waiting[rel] = (queued, kind)  # its journal may still be on the way (no stat until then)
                continue
            # "gone" is checked too: a file deleted and re-created (an evicted block stored again) whose
            # creation event was lost (its directory was removed and made again, so unwatched) must keep the
            # row its writer's journal gave it; removing it hid the file from the catalog until the next scan.
            metrics.METADATA_OPS.labels("watch").inc()
            try:
                st = os.lstat(self.root / rel)
            except OSError:
                st = None  # moved or deleted again since the event
            if st is not None and not stat.S_ISREG(st.st_mode):
                continue  # a symlink or directory with a block's name is not a block
            if key is None:  # a temp file
                if st is not None:
                    self.orphans.add(TempFile(rel, st.st_size, st.st_mtime))
                else:
                    orphan_gone.append(rel)
                continue
            if st is not None and key.fmt == "kvfs":
                if kind == "gone":  # back since: its own creation event is on the way, or was lost
                    waiting[rel] = (queued, "present")
                    continue
                metrics.TREE_EVENTS.labels("upsert").inc()
                # A row only where its journal made none: a writer killed between publishing a file and
                # flushing its journal leaves a file no record describes (the soak found ~1 per writer kill,
                # uncounted until the next scan, so usage stayed over the cap).  Recency from mtime only.
                found.append(
                    BlockRow(key=key, size=allocated_bytes(st), created=st.st_mtime, last_access=st.st_mtime)
                )
            elif st is not None:
                metrics.TREE_EVENTS.labels("upsert").inc()
                # Files no journal describes: the scan's rule.
                seen = max(st.st_atime, st.st_mtime)
                rows.append(
                    BlockRow(key=key, size=allocated_bytes(st), created=st.st_mtime, last_access=seen)
                )
            else:
                metrics.TREE_EVENTS.labels("remove").inc()
                gone.append(key)
        self.orphans.discard(orphan_gone)
        if waiting:
            self._requeue(waiting)
        try:
            if rows:
                self.catalog.upsert_blocks(rows)
            if found:
                self.catalog.add_found_blocks(found)
            if gone:
                self.catalog.remove_blocks(gone)
        except Exception:
            self._requeue(pending)
            raise
        return len(rows) + len(found) + len(gone)

    def _requeue(self, events: dict[str, tuple[float, str]]) -> None:
        """Put events back; a newer event for a path, queued meanwhile, wins."""
        with self._lock:
            for rel, event in events.items():
                self._pending.setdefault(rel, event)


class Watchers:
    """Starts/stops the journal-folder and tree observers per the `watch` setting.

    The journal watch (one directory) starts at once; the tree watch (`start_tree`) adds one inotify watch per
    directory, which takes tens of seconds on a 100k-directory tree, so the service runs it in the background
    after its first enforcement pass and scans once more afterwards (files written before a directory was
    watched are found by that scan).
    """

    def __init__(
        self,
        mode: str,
        poll_interval: float,
        root: Path,
        journal_path: Path,
        on_journal: Callable[[], None],
        tree: TreeFeed,
        on_tree_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.mode = mode
        self.poll_interval = poll_interval
        self.root = root
        self.journal_path = journal_path
        self.on_journal = on_journal
        self.tree = tree
        self.on_tree_lost = on_tree_lost
        self._observers: list[Any] = []
        self._tree_observer: Any = None
        self._lock = threading.Lock()  # start_tree (a background thread) against stop
        self._stopped = False
        self.tree_state = "off" if mode == "off" else "pending"  # pending, adding, watching, failed, stopped
        self.tree_setup_s: float | None = None

    def start(self) -> None:
        """Both watches, in the caller's thread."""
        self.start_journal()
        self.start_tree()

    def start_journal(self) -> None:
        if self.mode != "inotify":
            return  # polling the journal folder would only duplicate the fallback timer
        jobs = Observer()
        jobs.schedule(
            _Trigger(self.on_journal), str(self.journal_path), recursive=False, event_filter=_JOURNAL_EVENTS
        )
        jobs.daemon = True
        jobs.start()
        with self._lock:
            self._observers.append(jobs)

    def start_tree(self) -> bool:
        """Add the tree watch (slow on a big tree); True once in place, False if stopped meanwhile or `off`."""
        with self._lock:
            if self.mode == "off" or self._stopped:
                return False
            self.tree_state = "adding"
            started = time.monotonic()
            tree = make_observer(self.mode, self.poll_interval)
            tree.daemon = True
            try:
                tree.schedule(
                    self.tree.handler(self.on_tree_lost),
                    str(self.root),
                    recursive=True,
                    event_filter=_TREE_EVENTS,
                )
                tree.start()
            except OSError:
                self.tree_state = "failed"
                metrics.TREE_WATCH_READY.set(0)
                raise
            self._tree_observer = tree
            self._observers.append(tree)
            self.tree_setup_s = time.monotonic() - started
            self.tree_state = "watching"
            metrics.TREE_WATCH_READY.set(1)
            metrics.TREE_WATCH_SETUP_SECONDS.set(self.tree_setup_s)
        log.info("watching %s (%s), set up in %.2fs", self.root, self.mode, self.tree_setup_s)
        return True

    def stop(self, *, exiting: bool = False) -> None:
        """Stop watching.  `exiting`: the process is about to end, so the tree watch is left to the kernel, which
        drops every watch with the descriptor: removing them one by one queues an IN_IGNORED event each, and
        100k of them overflow the inotify queue (a spurious "Inotify queue overflowed" at every shutdown)."""
        with self._lock:
            self._stopped = True
            self.tree_state = "stopped" if self.mode != "off" else "off"
            metrics.TREE_WATCH_READY.set(0)
            observers = [o for o in self._observers if not (exiting and o is self._tree_observer)]
            self._observers.clear()
        for obs in observers:
            obs.unschedule_all()  # watchdog keeps inotify callbacks per path otherwise (a restart re-adds them)
            obs.stop()
        for obs in observers:
            obs.join(timeout=2)
