"""Capacity arithmetic: watermarks against max_bytes (catalog bytes) or the filesystem (statvfs)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from evictor.passes import Capacity, capacity_target, measure_capacity
from evictor.settings import load_settings
from kvfs.catalog import BlockRow, Catalog
from kvfs.layout import BlockKey


def _key(i: int) -> BlockKey:
    return BlockKey("org_m_0123456789ab", None, 0, f"{i:032x}", "kvfs")


def test_max_bytes_mode_uses_catalog_bytes(tmp_path: Path, sqlite_url: str) -> None:
    settings = load_settings({"root": str(tmp_path), "max_bytes": "1000"}, environ={})
    with Catalog.open(sqlite_url) as cat:
        cat.upsert_blocks([BlockRow(_key(i), 100, 1.0, 1.0) for i in range(9)])
        cap = measure_capacity(settings, cat)
    assert (cap.used, cap.capacity, cap.source, cap.catalog_files) == (900, 1000, "max_bytes", 9)
    assert capacity_target(settings, cap) == 700  # over 85 %: keep 70 % of 1000
    under = Capacity(850, 1000, "max_bytes", 850, 9)
    assert capacity_target(settings, under) is None  # at the high watermark is not over it


def test_statvfs_mode_measures_the_filesystem(tmp_path: Path, sqlite_url: str) -> None:
    # Watermarks below 1 % are refused as settings (0.85 is a typo for 85); the arithmetic takes any value.
    settings = replace(
        load_settings({"root": str(tmp_path)}, environ={}), high_watermark=0.001, low_watermark=0.0005
    )
    st = os.statvfs(tmp_path)
    with Catalog.open(sqlite_url) as cat:
        cat.upsert_blocks([BlockRow(_key(i), 4096, 1.0, 1.0) for i in range(10)])
        cap = measure_capacity(settings, cat)
    assert cap.source == "statvfs" and cap.capacity == st.f_blocks * st.f_frsize
    assert 0 < cap.used <= cap.capacity and cap.catalog_bytes == 40960
    # This filesystem is fuller than 0.001 %: the plan must free (used - 0.0005 % of capacity) from the catalog,
    # which it cannot fully do, so the target is to keep nothing.
    assert capacity_target(settings, cap) == 0
    relaxed = load_settings(
        {"root": str(tmp_path), "high_watermark": "100", "low_watermark": "99"}, environ={}
    )
    assert capacity_target(relaxed, cap) is None
