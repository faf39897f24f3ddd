"""`run_pass` when the catalog fails between planning and a delete batch: the batch is kept whole (no file
removed whose recency could not be confirmed), the failure counted, and the pass goes on to report it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from test_gc import NOW, Tree, fill

from kvfs.catalog import Catalog
from kvfs.eviction import Limits, PassHooks, run_pass
from kvfs.policy import get_policy


def test_a_catalog_failing_at_the_recheck_keeps_the_batch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    db = tmp_path / "catalog.db"
    catalog = Catalog.open(f"sqlite:///{db}", root=root)
    tree = Tree(root, catalog)
    fill(tree, 6)

    def break_the_catalog(_batch: int) -> bool:
        # Another process changes the database under the pass: the recheck's query cannot run.
        with sqlite3.connect(db) as other:
            other.execute("ALTER TABLE blocks RENAME TO blocks_gone")
        return True

    try:
        outcome = run_pass(
            catalog,
            root,
            Limits(max_bytes=tree.size * 3),
            get_policy("lru"),
            hooks=PassHooks(before_batch=break_the_catalog),
            now=NOW,
            batch_size=100,
        )
    finally:
        catalog.close()
    assert len(outcome.plan.victims) == 3
    assert outcome.result is not None
    assert outcome.result.recheck_failures == 1 and outcome.result.deleted_files == 0
    assert tree.present() == set(range(1, 7))  # nothing deleted on an unconfirmed recheck
