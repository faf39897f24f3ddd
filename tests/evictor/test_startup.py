"""Start-up on a tree with many directories: the first enforcement pass comes from the catalog and a scan, the
tree watch is added afterwards in the background, a scan after it closes the gap, and SIGTERM does not
overflow the inotify queue."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from evictor_helpers import files_on_disk, wait_for

pytestmark = pytest.mark.slow

NS = "org_stock_0123456789ab_r0"
SIZE = 4096
TOPS, LEAVES = 4096, 5  # 4096 + 20480 directories: more watches than the default inotify queue (16384) holds


def build(root: Path, files: int) -> list[str]:
    """Bucket directories of a stock (.bin) namespace, `files` of them holding an old block file."""
    rels = []
    for top in range(TOPS):
        for leaf in range(LEAVES):
            d = root / NS / f"{top:03x}" / f"{leaf:02x}_g0"
            d.mkdir(parents=True)
            if len(rels) < files and (top * LEAVES + leaf) % 7 == 0:
                rel = f"{NS}/{top:03x}/{leaf:02x}_g0/{top:03x}{leaf:02x}{len(rels):011x}.bin"
                fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT, 0o660)
                os.write(fd, bytes(SIZE))  # written, not truncated: a sparse file holds (and counts) nothing
                os.close(fd)
                stamp = time.time() - 7200 + len(rels)  # the first written is the oldest
                os.utime(root / rel, (stamp, stamp))
                rels.append(rel)
    return rels


def test_first_pass_before_tree_watch_then_gap_scan_and_quiet_shutdown(
    root: Path, sqlite_url: str, start_evictor
) -> None:
    rels = build(root, 1000)
    cap = 1000 * SIZE  # 100% full: high 85% -> down to 70%, the 300 oldest go
    ev = start_evictor(
        root, sqlite_url, "--max-bytes", str(cap), "--high-watermark", "85", "--low-watermark", "70",
        "--watch", "inotify", "--enforce-interval", "5",
    )  # fmt: skip
    evicted = ev.wait_log(r"evicted 300 files", timeout=60)
    # Written after the start-up scan, into a directory the watch may or may not cover yet: the watch or the
    # scan that follows it must find it.
    late = f"{NS}/fff/04_g0/fff04{0x1A7E:011x}.bin"
    (root / late).write_bytes(b"x" * SIZE)
    watching = ev.wait_log(r"watching \S+ \(inotify\)", timeout=60)
    log = ev.log()
    # The pass acted on the catalog and the scan before any tree watch was added, within seconds of start
    # (not a whole enforce interval later).
    assert log.index(evicted[0]) < log.index(watching[0])
    first = re.search(r"first enforcement pass done ([\d.]+)s after start", log)
    assert first is not None and float(first[1]) < 4
    wait_for(lambda: ev.status()["scans_done"] >= 2, timeout=60, what="the scan after the watch was set up")
    assert ev.status()["tree_watch"]["state"] == "watching"
    # The bucket directories that pass emptied go after it (rmdir is slow: the target first).
    ev.wait_log(r"removed \d+ emptied bucket directories", timeout=60)
    assert not any((root / rel).parent.exists() for rel in rels[:300])
    assert all((root / rel).parent.is_dir() for rel in rels[300:])
    on_disk = files_on_disk(root)
    # The oldest went, by the scan's times.
    assert not set(rels[:300]) & on_disk and set(rels[300:]) <= on_disk
    wait_for(
        lambda: (ev.status()["usage"] or {}).get("catalog_files") == 701,
        timeout=30,
        what="the late file in the catalog",
    )
    assert ev.stop() == 0
    assert "overflow" not in ev.log().lower()


def test_emptied_directories_are_removed_once_unchanged_for_min_age(
    root: Path, sqlite_url: str, start_evictor
) -> None:
    rels = []
    for n in range(40):  # each old file in its own buckets
        rel = f"{NS}/{n:03x}/00_g0/{n:03x}00{n:011x}.bin"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(b"b" * SIZE)
        stamp = time.time() - 7200 + n
        os.utime(root / rel, (stamp, stamp))
        rels.append(rel)
    ev = start_evictor(
        root, sqlite_url, "--max-bytes", str(40 * SIZE), "--high-watermark", "85", "--low-watermark", "70",
        "--watch", "off", "--min-age", "3s",
    )  # fmt: skip
    ev.wait_log(r"evicted 12 files", timeout=60)
    gone = rels[:12]
    # Just emptied: a stock writer may be about to use them, so they stay for min_age.
    assert all((root / rel).parent.is_dir() for rel in gone)
    wait_for(
        lambda: not any((root / rel).parent.exists() for rel in gone), timeout=30, what="leaf dirs removed"
    )
    # Their parents changed when the leaves went: removed one min_age later.
    wait_for(lambda: not any((root / rel).parents[1].exists() for rel in gone), timeout=30, what="top dirs")
    assert all((root / rel).parents[1].is_dir() for rel in rels[12:])
    assert ev.stop() == 0
