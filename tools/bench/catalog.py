"""Catalog bulk-upsert rate next to raw `sqlite3.executemany` inserts of the same rows, in the same run.

    python -m tools.bench.catalog [--rows 1000000] [--runs 3] [--pg postgresql+psycopg://...]

Baseline: plain `INSERT` of pre-built tuples with the stdlib `sqlite3` module into a table with the catalog's
own columns, unique key and indexes, same pragmas (WAL, synchronous=NORMAL, cache_size), one transaction.  The catalog
figure includes everything `Catalog.upsert_blocks` does from `BlockRow` objects (namespace ids, tuple
building, sorting into key order, `INSERT ... ON CONFLICT DO UPDATE`).  Because the catalog sorts, the
baseline is run twice: on the rows as given and on the same rows pre-sorted (the goal is judged against the faster
of the two).  Goal: >= 0.5x the baseline.  Also: re-upserting the same rows
(every row a conflict → update), `usage()` on the full catalog (the `kvfs du` query; goal < 1 s at 1M rows)
and `apply_journal` of access records.  Medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvfs.catalog import BlockRow, Catalog
from kvfs.catalog.engine import SQLITE_CACHE_KIB
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey

BASELINE_DDL = [
    "CREATE TABLE blocks (id INTEGER PRIMARY KEY, namespace_id INTEGER NOT NULL, rank INTEGER NOT NULL, "
    "grp INTEGER NOT NULL, block_hash VARCHAR(128) NOT NULL, fmt VARCHAR(8) NOT NULL, size BIGINT NOT NULL, "
    "created FLOAT NOT NULL, last_access FLOAT NOT NULL, hits BIGINT NOT NULL, chain_pos INTEGER NOT NULL, "
    "state INTEGER NOT NULL, seen FLOAT NOT NULL, UNIQUE (namespace_id, rank, grp, block_hash, fmt))",
    "CREATE INDEX ix_ns_lru ON blocks (namespace_id, last_access, size)",
    "CREATE INDEX ix_lru ON blocks (last_access)",
]
BASELINE_INSERT = (
    "INSERT INTO blocks (namespace_id, rank, grp, block_hash, fmt, size, created, last_access, hits, chain_pos, "
    "state, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
NAMESPACES = [
    ("org_llama-8b_0123456789ab", None),
    ("org_qwen-32b_a1b2c3d4e5f6", 0),
    ("org_qwen-32b_a1b2c3d4e5f6", 1),
]


def make_rows(n: int, seed: int = 1) -> list[BlockRow]:
    rng = random.Random(seed)
    now = time.time()
    rows = []
    for i in range(n):
        ns, rank = NAMESPACES[i % len(NAMESPACES)]
        key = BlockKey(ns, rank, 0, f"{rng.getrandbits(128):032x}", "kvfs")
        t = now - rng.random() * 86400
        rows.append(BlockRow(key, 2 << 20, t, t, chain_pos=i % 64))
    return rows


def baseline_params(rows: list[BlockRow]) -> list[tuple[object, ...]]:
    ns_ids = {ns: i + 1 for i, ns in enumerate(dict.fromkeys(ns for ns, _ in NAMESPACES))}
    return [
        (
            ns_ids[r.key.namespace],
            -1 if r.key.rank is None else r.key.rank,
            r.key.group,
            r.key.block_hash,
            r.key.fmt,
            r.size,
            r.created,
            r.last_access,
            0,
            r.chain_pos,
            0,
            0.0,
        )
        for r in rows
    ]


def raw_sqlite_insert(path: Path, params: list[tuple[object, ...]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    for ddl in BASELINE_DDL:
        conn.execute(ddl)
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(BASELINE_INSERT, params)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt_rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} rows/s ({seconds:.2f} s)"


def run_catalog(url: str, rows: list[BlockRow], accesses: list[JournalRecord]) -> dict[str, float]:
    with Catalog.open(url) as catalog:
        for ns, _ in NAMESPACES:
            catalog.ensure_namespace(ns)
        result = {"insert": timed(lambda: catalog.upsert_blocks(rows))}
        result["update"] = timed(lambda: catalog.upsert_blocks(rows))
        result["usage"] = statistics.median(timed(catalog.usage) for _ in range(3))
        result["journal"] = timed(lambda: catalog.apply_journal(accesses, {"bench.jnl": len(accesses)}))
        assert catalog.block_count() == len(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.catalog", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--pg", default=None, help="also measure a PostgreSQL catalog (an empty database's URL)"
    )
    parser.add_argument("--tmp", default=None, help="directory for the SQLite files (default: system temp)")
    args = parser.parse_args(argv)

    print(f"catalog bench: {args.rows:,} rows, {args.runs} runs (medians)", flush=True)
    rows = make_rows(args.rows)
    params = baseline_params(rows)
    n_access = min(args.rows, 200_000)
    accesses = [JournalRecord(RecordKind.ACCESS, r.key, r.last_access + 60) for r in rows[:n_access]]
    sorted_params = sorted(params, key=lambda p: p[:4])
    raw: list[float] = []
    raw_sorted: list[float] = []
    cat: list[dict[str, float]] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="kvfs-bench-catalog-") as tmp:
            raw.append(raw_sqlite_insert(Path(tmp) / "raw.db", params))
            raw_sorted.append(raw_sqlite_insert(Path(tmp) / "raw-sorted.db", sorted_params))
            cat.append(run_catalog(f"sqlite:///{tmp}/catalog.db", rows, accesses))
        print(
            f"  run {run + 1}: raw {raw[-1]:.2f}s, raw key-ordered {raw_sorted[-1]:.2f}s, "
            f"catalog insert {cat[-1]['insert']:.2f}s",
            flush=True,
        )

    def med(key: str) -> float:
        return statistics.median(c[key] for c in cat)

    raw_s = statistics.median(raw)
    raw_sorted_s = statistics.median(raw_sorted)
    print(f"raw sqlite3 executemany INSERT (baseline) {fmt_rate(args.rows, raw_s)}")
    print(f"  same, rows pre-sorted in key order      {fmt_rate(args.rows, raw_sorted_s)}")
    print(f"catalog upsert_blocks, new rows          {fmt_rate(args.rows, med('insert'))}")
    print(f"catalog upsert_blocks, all conflicts     {fmt_rate(args.rows, med('update'))}")
    print(f"catalog apply_journal, access records    {fmt_rate(n_access, med('journal'))}")
    print(
        f"catalog usage() on {args.rows:,} rows       {med('usage') * 1000:.0f} ms (goal < 1000 ms at 1M rows)"
    )
    given, ordered = raw_s / med("insert"), raw_sorted_s / med("insert")
    print(f"ratio upsert/raw: {given:.2f}x (rows as given), {ordered:.2f}x (key-ordered)")
    ratio = min(given, ordered)
    verdict = "PASS" if ratio >= 0.5 else "BELOW GOAL"
    print(f"RATIO upsert/faster raw baseline = {ratio:.2f}x (goal >= 0.5x): {verdict}")

    if args.pg:
        pg = run_catalog(args.pg, rows, accesses)
        print(f"postgresql upsert_blocks, new rows        {fmt_rate(args.rows, pg['insert'])}")
        print(f"postgresql upsert_blocks, all conflicts   {fmt_rate(args.rows, pg['update'])}")
        print(f"postgresql apply_journal, access records  {fmt_rate(n_access, pg['journal'])}")
        print(f"postgresql usage()                        {pg['usage'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
