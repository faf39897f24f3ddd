"""`kvfs du` and gc planning on a large catalog, next to the raw SQL they stand on, in the same run.

    python -m tools.bench.du [--blocks 1000000] [--victims 100000] [--runs 5] [--catalog URL] [--keep]

Builds a catalog of `--blocks` rows with `Catalog.upsert_blocks` (8 namespaces, 2 ranks, last access spread
over a week, random chain positions), then measures, as medians of `--runs` runs:

* `kvfs du --json`, the whole command in-process (click parsing, catalog open, usage query, last-scan
  orphans, JSON), next to the bare aggregate it runs (`GROUP BY namespace_id` with the stdlib `sqlite3`
  module on the same file: the floor for any du).  Goal: < 1 s at 1M blocks.
* `kvfs du --json` as a fresh process (what a user waits for, interpreter start and imports included).
* `plan_pass` choosing `--victims` capacity victims in LRU order (its `usage()` aggregate included, and again
  with `usage` passed in as the evictor does), next to the policy's own SQL statement run with the stdlib
  `sqlite3` module, fetching the same number of rows.  Goal: < 1 s for 100k of 1M (the evictor's budget).

The SQLite catalog is cached under `bench-data/` (delete it, or pass `--rebuild`, to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from kvfs.catalog import BlockRow, Catalog, testing
from kvfs.cli import main as kvfs_main
from kvfs.eviction import Limits, plan_pass
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY, get_policy

BLOCK_SIZE = (2 << 20) + 4096
NAMESPACES = [f"org_model-{i}_{i:012x}" for i in range(8)]
WEEK = 7 * 86400.0
BUILD_CHUNK = 100_000


def build(catalog: Catalog, blocks: int, seed: int = 7) -> float:
    """Fill the catalog; returns the build time in seconds."""
    rng = random.Random(seed)
    now = time.time()
    t0 = time.perf_counter()
    for start in range(0, blocks, BUILD_CHUNK):
        rows = []
        for i in range(start, min(blocks, start + BUILD_CHUNK)):
            key = BlockKey(
                NAMESPACES[i % len(NAMESPACES)], (i // 8) % 2, 0, f"{rng.getrandbits(128):032x}", "kvfs"
            )
            last = now - rng.random() * WEEK
            rows.append(BlockRow(key, BLOCK_SIZE, last - 60, last, chain_pos=rng.randrange(64)))
        catalog.upsert_blocks(rows)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Timing:
    wall: float  # median wall-clock seconds
    cpu: float  # median CPU seconds of this process (steadier than wall time on a shared machine)

    def __str__(self) -> str:
        return f"{self.wall:.3f}s wall ({self.cpu:.3f}s CPU)"


def median_time(fn: Callable[[], object], runs: int) -> tuple[Timing, object]:
    walls, cpus, out = [], [], None
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return Timing(statistics.median(walls), statistics.median(cpus)), out


def raw_query(catalog: Catalog, sql: str, rows: int | None = None) -> Callable[[], int]:
    """Run `sql` on the bare driver connection (sqlite3 / psycopg), no SQLAlchemy and no Python objects built;
    fetch `rows` rows in chunks of 5000 (a server-side cursor on PostgreSQL), or all when None."""

    def run() -> int:
        raw = testing.raw_connection(catalog)
        try:
            driver = raw.driver_connection
            named = catalog.dialect == "postgresql" and rows is not None
            cur = driver.cursor(name="kvfs_bench") if named else driver.cursor()  # type: ignore[union-attr]
            cur.execute(sql)
            if rows is None:
                got = len(cur.fetchall())
            else:
                got = 0
                while got < rows:
                    chunk = cur.fetchmany(5000)
                    if not chunk:
                        break
                    got += len(chunk)
            cur.close()
            return got
        finally:
            raw.rollback()
            raw.close()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.du", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--victims", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--catalog", help="catalog URL (default: a cached SQLite file under bench-data/)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached SQLite catalog")
    args = parser.parse_args(argv)

    sqlite_path: str | None = None
    if args.catalog:
        url = args.catalog
    else:
        data = Path("bench-data")
        data.mkdir(exist_ok=True)
        sqlite_path = str((data / f"du-{args.blocks}.db").absolute())
        if args.rebuild:
            for suffix in ("", "-wal", "-shm"):
                Path(sqlite_path + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{sqlite_path}"
    root = Path("bench-data/du-root").absolute()
    root.mkdir(parents=True, exist_ok=True)

    with Catalog.open(url, root=root) as catalog:
        have = catalog.block_count()
        if have != args.blocks:
            if have:
                print(f"catalog has {have} blocks, not {args.blocks}: use --rebuild or another --catalog")
                return 2
            print(f"building {args.blocks:,} blocks ...", flush=True)
            took = build(catalog, args.blocks)
            print(f"  built in {took:.1f}s ({args.blocks / took:,.0f} rows/s through Catalog.upsert_blocks)")
        usage = catalog.usage()
        catalog_is_pg = catalog.dialect == "postgresql"
        print(f"catalog: {url} — {usage.total_files:,} blocks, {usage.total_bytes / 2**40:.2f} TiB")

        runner = CliRunner()
        cli_args = ["--root", str(root), "--catalog", url, "du", "--json"]

        def du_cli() -> dict[str, object]:
            result = runner.invoke(kvfs_main, cli_args)
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        du_s, du_out = median_time(du_cli, args.runs)
        assert isinstance(du_out, dict) and du_out["total_files"] == args.blocks
        usage_s, _ = median_time(catalog.usage, args.runs)

        def du_process() -> None:
            subprocess.run(
                [sys.executable, "-m", "kvfs.cli", *cli_args], check=True, capture_output=True, env=os.environ
            )

        proc_s, _ = median_time(du_process, max(3, args.runs // 2))
        base_du_s, _ = median_time(
            raw_query(
                catalog,
                "SELECT namespace_id, count(*), sum(size), min(last_access), max(last_access) "
                "FROM blocks GROUP BY namespace_id",
            ),
            args.runs,
        )

        target = usage.total_bytes - args.victims * BLOCK_SIZE
        limits = Limits(max_bytes=target)
        policy = get_policy("lru")
        plan_s, plan = median_time(lambda: plan_pass(catalog, limits, policy=policy), args.runs)
        assert plan is not None and len(plan.victims) == args.victims, len(plan.victims)  # type: ignore[attr-defined]
        plan_pre_s, _ = median_time(lambda: plan_pass(catalog, limits, policy=policy, usage=usage), args.runs)
        # The evictor plans with the default policy: time it too when it is not LRU (one warm-up call first,
        # for policies that prepare state on first use).
        default_s = None
        if DEFAULT_POLICY != "lru":
            default = get_policy(DEFAULT_POLICY)
            plan_pass(catalog, limits, policy=default, usage=usage)
            default_s, _ = median_time(lambda: plan_pass(catalog, limits, policy=default, usage=usage), 3)
        # The policy's own statement (same WHERE and ORDER BY), fetched in the same chunks, no Python objects.
        base_plan_s, _ = median_time(
            raw_query(
                catalog,
                "SELECT id, namespace_id, rank, grp, block_hash, fmt, size, last_access FROM blocks "
                f"WHERE last_access < {time.time() + 1e6} AND created < {time.time() + 1e6} "
                "ORDER BY last_access, chain_pos DESC, id",
                rows=args.victims,
            ),
            args.runs,
        )

    def line(label: str, ours: Timing, base: Timing | None = None, goal: str = "") -> None:
        text = f"{label:<44} {ours}"
        if base is not None:
            text += f"   raw query {base}: {ours.wall / base.wall:.1f}x wall, {ours.cpu / base.cpu:.1f}x CPU"
        print(text + (f"   goal {goal}" if goal else ""))

    n = f"{args.blocks:,}"
    print(f"\nmedians of {args.runs} runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    line(f"kvfs du --json, in-process ({n} blocks)", du_s, base_du_s, "< 1 s")
    line("  Catalog.usage() alone", usage_s)
    print(
        f"{'kvfs du --json, fresh process':<44} {proc_s.wall:.3f}s wall (interpreter start and imports included)"
    )
    line(f"plan_pass: {args.victims:,} LRU victims of {n}", plan_s, base_plan_s, "< 1 s")
    line("  with usage() given (the evictor's path)", plan_pre_s, base_plan_s)
    if default_s is not None:
        line(f"  default policy {DEFAULT_POLICY!r}, usage() given (3 runs)", default_s, base_plan_s)
    if catalog_is_pg:
        print("(PostgreSQL: CPU is this process's only; the server's work shows in wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
