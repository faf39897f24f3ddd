"""Issue 13, failures 5 and 7: `kvfs verify` must neither erase recency nor delete what it merely cannot read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from click.testing import CliRunner
from faultlib import Store, chown_tree, kvfs_cli

from kvfs.blockfile import HEADER_SIZE
from kvfs.catalog import Catalog
from kvfs.cli import main

HOUR = 3600.0


def test_verify_leaves_atime_and_scanned_recency_alone(tmp_path: Path) -> None:
    """Failure 5: verify's reads refreshed atime (relatime updates it when atime <= mtime) and the next scan
    took atime as last access, so every verified block looked just used."""
    store = Store(tmp_path / "root")
    old = time.time() - 5 * HOUR
    paths = [store.block(n) for n in range(4)]
    for path in paths:
        os.utime(path, (old, old))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    base = ["--root", str(store.root), "--catalog", url]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "scan", "--json"]).exit_code == 0
    verified = runner.invoke(main, [*base, "verify", "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["checked"] == 4
    assert [os.stat(p).st_atime for p in paths] == [old] * 4
    assert runner.invoke(main, [*base, "scan", "--json"]).exit_code == 0
    with Catalog.open(url) as catalog:
        recency = sorted(row.last_access for row in catalog.iter_blocks())
    assert recency == [old] * 4


def test_delete_corrupt_keeps_unreadable_files_and_reports_unreadable_dirs(open_tmp: Path) -> None:
    """Failure 7: a sound file verify cannot open (EACCES) was deleted as corrupt, and a directory it cannot
    list was skipped silently with exit status 0.  Run as an unprivileged user: root reads any file."""
    store = Store(open_tmp / "root")
    sound = [store.block(n) for n in range(3)]
    flipped = store.block(3)
    with open(flipped, "r+b") as fh:
        fh.seek(HEADER_SIZE + 7)
        fh.write(b"\xff\x00\xff")
    locked_file = store.block(4)
    hidden_block = store.block(0xFF0)
    hidden = hidden_block.parent.parent  # its bucket directory <ns>_r0/ff0
    chown_tree(open_tmp)
    locked_file.chmod(0)
    hidden.chmod(0)
    try:
        rc, out, err = kvfs_cli(
            "--root",
            str(store.root),
            "--catalog",
            f"sqlite:///{open_tmp / 'catalog.db'}",
            "verify",
            "--delete-corrupt",
            "--json",
            unprivileged=True,
        )
    finally:
        hidden.chmod(0o770)
        locked_file.chmod(0o660)
    assert out is not None, err
    assert rc == 1  # something could not be checked
    rel = lambda p: str(p.relative_to(store.root))  # noqa: E731
    assert out["corrupt"] == [{"path": rel(flipped), "reason": "checksum_mismatch"}]
    assert out["deleted"] == 1 and not flipped.exists()
    assert sorted((u["path"], u["reason"]) for u in out["unreadable"]) == sorted(
        [(rel(locked_file), "io_error"), (rel(hidden), "dir_unreadable")]
    )
    assert locked_file.exists() and hidden_block.exists() and all(p.exists() for p in sound)
