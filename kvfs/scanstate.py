"""What `kvfs du` reports about temp files: the summary of the last scan, kept in the catalog.

Counting temp files needs a walk of the whole tree, which `du` must not do (it answers from the catalog in
well under a second).  So every scan stores its orphan count and bytes under one `kvfs_meta` key, and `du`
shows that figure with the time it was taken.  Anything that runs `scan_tree` (the CLI, the evictor) can call
`record_scan` so the figure stays current.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

LAST_SCAN_KEY = "last_scan_orphans"


@dataclass(frozen=True, slots=True)
class OrphanSummary:
    files: int
    bytes: int
    time: float | None  # when the scan that counted them ended; None: no scan recorded yet


def record_scan(catalog: Catalog, result: Any, *, now: float | None = None) -> OrphanSummary:
    """Store the temp-file summary of a `ScanResult` (anything with `temp_files`)."""
    return record_temp_files(catalog, result.temp_files, now=now)


def record_temp_files(catalog: Catalog, orphans: Iterable[Any], *, now: float | None = None) -> OrphanSummary:
    """Store the count and bytes of `orphans` (objects with `size`), e.g. what a gc pass left of a scan's."""
    sizes = [o.size for o in orphans]
    summary = OrphanSummary(files=len(sizes), bytes=sum(sizes), time=time.time() if now is None else now)
    value = json.dumps({"files": summary.files, "bytes": summary.bytes, "time": summary.time})
    catalog.set_meta(LAST_SCAN_KEY, value)
    return summary


def last_scan_orphans(catalog: Catalog) -> OrphanSummary:
    value = catalog.get_meta(LAST_SCAN_KEY)
    if value is None:
        return OrphanSummary(0, 0, None)
    try:
        data = json.loads(value)
        return OrphanSummary(int(data["files"]), int(data["bytes"]), float(data["time"]))
    except (ValueError, KeyError, TypeError):
        return OrphanSummary(0, 0, None)
