"""Disk footprint of the evictor's SQLite catalog per block: the figure behind the catalog volume's size.

    .venv/bin/python tests/manifests/catalog_footprint.py 300000

Creates a catalog in a temporary directory, inserts N block rows (36 MiB blocks of one namespace, as in the
sizing example of docs/deploy.md), closes it and prints the bytes on disk (database + WAL) per row.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from kvfs.catalog import BlockRow, Catalog
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name


def bytes_per_block(rows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open(f"sqlite:///{tmp}/catalog.db")
        fields = kvfs_fields({"model_name": "Qwen/Qwen3-8B", "block_size": 16, "dtype": "bfloat16"})
        ns = namespace_name(fields)
        catalog.ensure_namespace(ns, model="Qwen/Qwen3-8B", fingerprint=fingerprint_sha256(fields).hex())
        now = time.time()
        catalog.upsert_blocks(
            BlockRow(
                BlockKey(ns, 0, 0, os.urandom(16).hex(), "kvfs"),
                (36 << 20) + 4096,
                now,
                now,
                chain_pos=i % 64,
            )
            for i in range(rows)
        )
        catalog.close()
        return sum(p.stat().st_size for p in Path(tmp).iterdir()) / rows


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    per = bytes_per_block(n)
    print(f"{n} blocks: {per * n / 1e6:.1f} MB on disk, {per:.0f} B per block")
