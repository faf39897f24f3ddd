"""Found by the soak: files on disk the catalog did not know, so usage stayed over the cap until the hourly scan.

The evictor deletes block X; the tree watcher queues "gone X".  A writer stores X again and journals it; ingest
puts the row back.  The creation event is lost: X's bucket directory had been removed as empty and made again,
and the new one is not watched yet.  Applying the stale "gone X" then removed the row of a file that exists.
The tree feed now checks the file at apply time for every event, as its docstring says it does."""

from __future__ import annotations

import time
from pathlib import Path

from evictor_helpers import wait_for
from faultlib import Store
from watchdog.events import FileDeletedEvent

from evictor.watch import TempFileTracker, TreeFeed
from kvfs.catalog import BlockRow, Catalog


def test_stale_gone_event_keeps_the_row_of_a_recreated_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    path = store.block(1)
    key = store.key(1)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", root=store.root) as catalog:
        feed = TreeFeed(store.root, catalog, TempFileTracker())
        handler = feed.handler()
        path.unlink()  # evicted ...
        handler.on_deleted(FileDeletedEvent(str(path)))
        store.block(1)  # ... and stored again; its creation event never arrives (unwatched new directory)
        now = time.time()
        catalog.upsert_blocks(
            [BlockRow(key, path.stat().st_size, now, now)]
        )  # the writer's journal, ingested
        feed.apply()
        assert catalog.last_access_of([key]) == {key: now}
        # A file really gone still loses its row.
        path.unlink()
        handler.on_deleted(FileDeletedEvent(str(path)))
        feed.apply()
        assert catalog.last_access_of([key]) == {}


def test_blocks_of_a_writer_killed_before_its_journal_flush_are_evicted(
    tmp_path: Path, start_evictor
) -> None:
    """A writer SIGKILLed between publishing block files and flushing their journal records leaves files no
    record describes.  The tree watcher sees them; they must reach the catalog and count against the cap (the
    old feed ignored kvfs files, leaving them to the hourly scan: usage stayed over the cap)."""
    store = Store(tmp_path / "root")
    size = store.block(0).stat().st_size
    ev = start_evictor(store.root, f"sqlite:///{tmp_path / 'catalog.db'}", "--max-bytes", str(4 * size))
    ev.wait_leader()
    wait_for(lambda: ev.status()["tree_watch"]["state"] == "watching", what="the tree watch")
    for n in range(1, 12):  # published, never journaled: their writer died before its flush
        store.block(n)
    wait_for(lambda: len(list(store.root.rglob("*.kvfs"))) <= 4, timeout=30, what="usage back under the cap")
