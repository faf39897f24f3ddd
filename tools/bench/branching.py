"""Journal ingest at a branch point: the superseded-leaf check against the number of siblings it visits.

    python -m tools.bench.branching [--siblings 1000,10000,100000] [--runs 5] [--tmp DIR]

A prefix P (a system prompt) has N stored children, each with a child of its own (a document's first and second
block).  One request then branches off P: an ACCESS of P and a STORE of a new child of P, applied with
`Catalog.apply_journal`.  With the parent recorded, the catalog checks P's other children for never-read leaves
to mark superseded (`_Sql.supersede`); the baseline, in the same run and catalog, applies the same batch with no
parent recorded (no check).  Medians of `--runs` batches.  Up to schema v6 the check visited every sibling
(about 1 us each); from v7 it reads only the siblings it could mark from `ix_blocks_branch` (siblings with
children are left out by `blocks.has_child`), so the cost should not grow with N.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kvfs.catalog import BlockRow, Catalog
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey

NS = "org_model_0123456789ab"


def key(n: int) -> BlockKey:
    return BlockKey(NS, None, 0, f"{n:032x}", "kvfs")


def build(catalog: Catalog, siblings: int) -> None:
    rows = [BlockRow(key(1), 1, 1.0, 1.0, 0)]
    for i in range(siblings):
        head, second = 10 + 2 * i, 11 + 2 * i
        rows.append(BlockRow(key(head), 1, 2.0, 2.0, 1, parent_hash=key(1).block_hash))
        rows.append(BlockRow(key(second), 1, 2.0, 2.0, 2, parent_hash=key(head).block_hash))
    catalog.upsert_blocks(rows)


def branch_ms(catalog: Catalog, runs: int, *, first: int, record_parent: bool) -> float:
    times = []
    for j in range(runs):
        t = 100.0 + first + j
        parent = key(1).block_hash if record_parent else None
        batch = [
            JournalRecord(RecordKind.ACCESS, key(1), t),
            JournalRecord(RecordKind.STORE, key(first + j), t, 1, 1, parent),
        ]
        started = time.perf_counter()
        catalog.apply_journal(batch, {})
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.branching", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--siblings", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="directory for the scratch catalogs")
    args = parser.parse_args(argv)
    print("SQLite catalog; one branching request (ACCESS of the prefix + STORE of a new child), medians")
    for n in (int(s) for s in args.siblings.split(",")):
        with (
            tempfile.TemporaryDirectory(dir=args.tmp) as tmp,
            Catalog.open(f"sqlite:///{Path(tmp) / 'c.db'}") as cat,
        ):
            build(cat, n)
            checked = branch_ms(cat, args.runs, first=10_000_000, record_parent=True)
            bare = branch_ms(cat, args.runs, first=20_000_000, record_parent=False)
        print(
            f"  {n:>9,} siblings: with the sibling check {checked:8.2f} ms, baseline without a parent "
            f"{bare:6.2f} ms: {checked / bare:6.1f}x, {(checked - bare) * 1e3 / n:.2f} us per sibling"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
