"""Several evictors on one PostgreSQL catalog, a catalog outage, and a crash in the middle of an eviction."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
from evictor_helpers import files_on_disk, run_writer, wait_for
from writer import key_for

from kvfs.catalog import Catalog

pytestmark = pytest.mark.slow

FILE = 64 * 1024
PAYLOAD = FILE - 4096


def _admin() -> psycopg.Connection:
    return psycopg.connect(
        host=os.environ.get("KVFS_TEST_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("KVFS_TEST_PG_PORT", "5432")),
        user=os.environ.get("KVFS_TEST_PG_USER", "postgres"),
        dbname=os.environ.get("KVFS_TEST_PG_DB", "test"),
        autocommit=True,
    )


def test_sigkill_leader_follower_takes_over(root: Path, pg_url: str, start_evictor) -> None:
    cap = 20 * FILE
    a = start_evictor(root, pg_url, "--max-bytes", str(cap), name="a")
    a.wait_leader()
    b = start_evictor(root, pg_url, "--max-bytes", str(cap), name="b")
    wait_for(lambda: b.get("/readyz")[0] == 200, what="the follower to be ready")
    time.sleep(1.0)  # several election rounds: the follower must stay a follower
    assert a.status()["leader"] and not b.status()["leader"]
    assert b.metric("kvfs_evictor_leader") == 0
    # Only the leader ingests: the follower never applies a journal record (so none is applied twice).
    old = [time.time() - 2000 + i for i in range(3)]
    run_writer(root, "org/model-ha", old, mtimes=[t - 10 for t in old], payload=PAYLOAD, first=100)
    wait_for(lambda: a.metric("kvfs_evictor_journal_records_total") == 3, what="the leader to ingest")
    time.sleep(0.5)
    assert b.metric("kvfs_evictor_journal_records_total") == 0

    a.stop(signal.SIGKILL)
    t0 = time.monotonic()
    b.wait_leader(timeout=10)
    takeover = time.monotonic() - t0
    assert takeover < 3.0, f"takeover took {takeover:.1f}s (bound: leader_retry 0.3s + start-up)"

    # The new leader does the job: a store beyond the cap converges.
    now = time.time()
    # Files published when their journal says (mtimes consistent with the records): the tree watcher may upsert
    # a file from its mtime before its STORE record is applied, and an upsert never lowers a journaled recency.
    times = [now - 1000 + i for i in range(30)]
    written = run_writer(root, "org/model-ha", times, mtimes=[t - 10 for t in times], payload=PAYLOAD)
    wait_for(lambda: len(files_on_disk(root)) <= 14, timeout=30, what="the new leader to evict")
    assert {w["relpath"] for w in written[-14:]} <= files_on_disk(root)
    assert b.stop() == 0


def test_catalog_outage_not_ready_then_recovers_without_losing_records(
    root: Path, pg_url: str, start_evictor
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    ev = start_evictor(root, pg_url, "--max-bytes", "1G")
    ev.wait_leader()
    now = time.time()
    run_writer(root, "org/model-out", [now - 100 + i for i in range(5)], payload=1024)
    wait_for(lambda: (ev.status()["usage"] or {}).get("catalog_files") == 5, what="first records ingested")

    with _admin() as admin:
        # A real outage, without restarting the shared server: no new sessions, existing ones killed.
        admin.execute(f'alter database "{dbname}" allow_connections false')
        try:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (dbname,)
            )
            # Records journaled during the outage must reach the catalog afterwards.
            times = [now - 50 + i for i in range(10)]
            run_writer(
                root,
                "org/model-out",
                times,
                payload=1024,
                first=5,
                mtimes=[t - 30 for t in times],  # a scan alone would record these older times
                accesses=[[5, now - 20], [6, now - 20], [6, now - 19]],
            )
            wait_for(lambda: ev.get("/readyz")[0] == 503, timeout=30, what="readyz to report the outage")
            assert b"catalog unreachable" in ev.get("/readyz")[1]
            assert ev.get("/healthz")[0] == 200  # alive, just not ready
            time.sleep(1.0)
        finally:
            admin.execute(f'alter database "{dbname}" allow_connections true')
    wait_for(lambda: ev.get("/readyz")[0] == 200, timeout=40, what="readyz to recover")
    wait_for(lambda: ev.status()["leader"], timeout=30, what="leadership after the outage")
    with Catalog.open(pg_url) as cat:
        wait_for(lambda: cat.block_count() == 15, timeout=30, what="all 15 journaled blocks in the catalog")
        keys = [key_for("org/model-out", i) for i in range(5, 15)]
        rows = cat.get_blocks(keys)
        got = [(round(rows[k].last_access, 3), rows[k].hits) for k in keys]
        want = [(round(t, 3), 0) for t in times]
        want[0], want[1] = (round(now - 20, 3), 1), (round(now - 19, 3), 2)
        assert got == want, "journal records written during the outage were lost or applied twice"
    assert ev.metric("kvfs_evictor_errors_total", 'kind="catalog"') >= 1
    assert "catalog reachable again" in ev.log()
    assert ev.stop() == 0


def test_crash_mid_eviction_is_reconciled_on_restart(root: Path, sqlite_url: str, start_evictor) -> None:
    now = time.time()
    n = 12
    times = [now - 5000 + i for i in range(n)]
    written = run_writer(root, "org/model-crash", times, mtimes=[t - 10 for t in times], payload=PAYLOAD)
    cap = n * FILE
    args = ("--max-bytes", str(cap), "--high-watermark", "50", "--low-watermark", "25")  # evict 9 of 12
    ev = start_evictor(root, sqlite_url, *args, "--delete-batch", "3", "--pause-before-delete", "1s")
    wait_for(lambda: ev.status()["paused_batches"] >= 2, timeout=30, what="the second batch")
    ev.stop(signal.SIGKILL)  # mid-pass: one batch deleted, the others not
    left = files_on_disk(root)
    assert n - 9 < len(left) < n, f"{len(left)} files left: expected a half-done pass"
    # The worst moment for a crash: a file unlinked, its row not yet removed. Make that state explicitly.
    unlinked_not_forgotten = root / written[len(written) - len(left)]["relpath"]
    unlinked_not_forgotten.unlink()
    with Catalog.open(sqlite_url) as cat:
        assert cat.block_count() == len(left)  # its row is still there

    ev2 = start_evictor(root, sqlite_url, *args)
    wait_for(lambda: len(files_on_disk(root)) == 3, timeout=30, what="the restarted evictor to finish")
    assert files_on_disk(root) == {w["relpath"] for w in written[-3:]}
    time.sleep(0.7)
    with Catalog.open(sqlite_url) as cat:
        assert cat.block_count() == 3  # no rows for deleted files, none lost for present ones
    assert ev2.stop() == 0
