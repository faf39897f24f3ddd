"""The real service in subprocesses: capacity, LRU by journal, TTL, quotas, orphans, grace, recheck, dry-run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from evictor_helpers import bytes_on_disk, files_on_disk, run_writer, wait_for

from evictor.cli import evictor as evictor_cli
from kvfs.catalog import Catalog
from kvfs.policy import DEFAULT_POLICY

pytestmark = pytest.mark.slow

KIB = 1024
FILE = 64 * KIB  # 4 KiB header + 60 KiB payload
PAYLOAD = FILE - 4096


def test_capacity_converges_lru_by_journal_not_mtime(root: Path, catalog_url: str, start_evictor) -> None:
    """40 blocks written while the evictor runs, beyond the cap: the least recently used by journal go."""
    n = 40
    cap = n * FILE  # high 85% = 34 blocks; low 70% = 28 blocks
    ev = start_evictor(root, catalog_url, "--max-bytes", str(cap), "--min-age", "60s")
    ev.wait_leader()
    now = time.time()
    times = [now - 10_000 + 10 * i for i in range(n)]  # block i used at times[i]: 0 is the LRU
    mtimes = [now - 50_000 - 10 * i for i in range(n)]  # file times say the opposite (and are all older)
    written = run_writer(root, "org/model-lru", times, mtimes=mtimes, payload=PAYLOAD)
    assert all(w["size"] == FILE for w in written)
    order = [w["relpath"] for w in written]

    wait_for(lambda: bytes_on_disk(root) <= 0.70 * cap, timeout=30, what="usage under the low watermark")
    time.sleep(1.0)  # a few more passes: nothing more goes once under the low watermark
    present = files_on_disk(root)
    survivors = [i for i, rel in enumerate(order) if rel in present]
    evicted = [i for i, rel in enumerate(order) if rel not in present]
    assert evicted, "nothing was evicted"
    assert max(evicted) < min(survivors), f"not LRU by journal: evicted {evicted}"
    assert len(survivors) >= 28 - 1  # not more than needed (one pass may see a partial journal flush)
    ev.wait_log(r"evicted \d+ files.*capacity: \d+ files")

    # The catalog agrees with the disk, and the eviction log says why.
    with Catalog.open(catalog_url) as cat:
        assert cat.block_count() == len(present)
        reasons = {e.reason for e in cat.eviction_log(10)}
        assert "capacity" in reasons
    assert ev.metric("kvfs_evicted_files_total", 'reason="capacity"') == len(evicted)
    assert ev.stop() == 0


def test_default_policy_converges(root: Path, sqlite_url: str, start_evictor) -> None:
    """The default policy (whatever kvfs.policy.DEFAULT_POLICY names) keeps usage under the low watermark."""
    n = 30
    cap = n * FILE
    ev = start_evictor(root, sqlite_url, "--max-bytes", str(cap), "--policy", DEFAULT_POLICY)
    now = time.time()
    accesses = [[i, now - 500 + i] for i in range(0, n, 3)]  # some blocks used again
    run_writer(
        root, "org/model-default", [now - 1000 + i for i in range(n)], payload=PAYLOAD, accesses=accesses
    )
    wait_for(lambda: bytes_on_disk(root) <= 0.70 * cap, timeout=30, what="usage under the low watermark")
    assert ev.status()["policy"] == DEFAULT_POLICY
    assert ev.stop() == 0


def test_ttl_quota_orphans_and_grace(root: Path, sqlite_url: str, start_evictor) -> None:
    """Existing store, evictor started afterwards: the start-up scan and journals give it everything."""
    now = time.time()
    old = [now - 7200 - i for i in range(6)]
    a = run_writer(root, "org/model-a", old, mtimes=[t - 10 for t in old], payload=PAYLOAD)
    b_times = [now - 900 + 60 * i for i in range(8)]  # within the TTL; quota keeps 4
    b = run_writer(root, "org/model-b", b_times, mtimes=[t - 10 for t in b_times], payload=PAYLOAD)
    c = run_writer(root, "org/model-c", [now] * 4, payload=PAYLOAD)  # fresh: the grace window protects them
    d_times = [now - 600 - i for i in range(3)]  # a retired model: everything goes, whatever its age
    retired = run_writer(root, "org/model-d", d_times, mtimes=[t - 10 for t in d_times], payload=PAYLOAD)
    ns_d = retired[0]["relpath"].split("/")[0].rsplit("_r", 1)[0]
    ns_b = b[0]["relpath"].split("/")[0].rsplit("_r", 1)[0]
    ns_c = c[0]["relpath"].split("/")[0].rsplit("_r", 1)[0]
    # temp files of dead writers: one past the orphan grace, one not
    d = root / a[0]["relpath"]
    stale_tmp = d.with_name(d.name + "_dead0001.tmp")
    stale_tmp.write_bytes(b"x" * 1000)
    os.utime(stale_tmp, (now - 7200, now - 7200))
    fresh_tmp = d.with_name(d.name + "_live0001.tmp")
    fresh_tmp.write_bytes(b"y" * 1000)

    ev = start_evictor(
        root,
        sqlite_url,
        "--max-bytes",
        "1GiB",
        "--ttl",
        "1h",
        "--min-age",
        "2m",
        "--orphan-grace",
        "30m",
        "--quota",
        f"{ns_b}={4 * FILE}",
        "--quota",
        f"{ns_c}=0",
        "--retire",
        ns_d,
    )
    present_a = lambda: {w["relpath"] for w in a} & files_on_disk(root)  # noqa: E731
    wait_for(lambda: not present_a(), timeout=30, what="TTL eviction of model-a")
    wait_for(lambda: not stale_tmp.exists(), timeout=30, what="the stale temp file to go")
    wait_for(lambda: len({w["relpath"] for w in b} & files_on_disk(root)) == 4, timeout=30, what="quota of b")
    time.sleep(1.0)
    on_disk = files_on_disk(root)
    assert {w["relpath"] for w in b[4:]} <= on_disk, "the quota must keep b's most recently used blocks"
    assert {w["relpath"] for w in c} <= on_disk, "blocks inside min_age were evicted"
    assert fresh_tmp.exists(), "a temp file inside the orphan grace was deleted"
    log = ev.log()
    assert "ttl: 6 files" in log and "quota: 4 files" in log and "orphan: 1 files" in log
    assert "retired: 3 files" in log and not {w["relpath"] for w in retired} & on_disk
    assert ev.stop() == 0
    # The last scan (the one after the tree watch was in place, itself after the first pass deleted the stale
    # temp file) left its temp-file summary for `kvfs du`: the fresh temp file only.
    from kvfs.catalog import Catalog
    from kvfs.scanstate import last_scan_orphans

    with Catalog.open(sqlite_url) as cat:
        summary = last_scan_orphans(cat)
    assert summary.time is not None and summary.files == 1 and summary.bytes == 1000


def test_victim_accessed_between_choice_and_delete_survives(
    root: Path, sqlite_url: str, start_evictor
) -> None:
    now = time.time()
    n = 10
    times = [now - 5000 + i for i in range(n)]
    written = run_writer(root, "org/model-race", times, mtimes=[t - 100 for t in times], payload=PAYLOAD)
    victim = root / written[0]["relpath"]
    cap = n * FILE
    ev = start_evictor(
        root,
        sqlite_url,
        "--max-bytes",
        str(int(cap / 0.8)),
        "--high-watermark",
        "50",
        "--low-watermark",
        "40",
        "--pause-before-delete",
        "2s",
    )
    ev.wait_log(r"pausing 2\.0s before deleting a batch")
    assert victim.exists()
    # A reader uses the oldest block (the first victim) while the evictor sits between planning and unlinking.
    run_writer(root, "org/model-race", [], accesses=[[0, time.time()]], writer_id="reader-1")
    ev.wait_log(r"evicted 4 files", timeout=30)  # 5 chosen (down to the low watermark), 1 spared
    assert victim.exists(), "a block accessed after being chosen was deleted"
    assert len(files_on_disk(root)) == n - 4
    assert ev.metric("kvfs_recheck_spared_files_total") == 1
    assert "recheck: 1 of 5 victims were used since they were chosen" in ev.log()
    assert ev.stop() == 0


def test_dry_run_deletes_nothing(root: Path, sqlite_url: str, start_evictor) -> None:
    now = time.time()
    written = run_writer(root, "org/model-dry", [now - 3000 + i for i in range(10)], payload=PAYLOAD)
    before = files_on_disk(root)
    ev = start_evictor(root, sqlite_url, "--max-bytes", str(5 * FILE), "--ttl", "1s", "--dry-run")
    ev.wait_log(r"dry-run: would evict 10 files")
    time.sleep(0.7)
    assert files_on_disk(root) == before == {w["relpath"] for w in written}
    assert ev.metric("kvfs_evicted_files_total", 'reason="ttl"') == 0
    assert ev.stop() == 0


def test_http_endpoints_and_sigterm(root: Path, sqlite_url: str, start_evictor) -> None:
    ev = start_evictor(root, sqlite_url, "--max-bytes", "1G", "--log-format", "json")
    ev.wait_leader()
    assert ev.get("/healthz")[0] == 200
    wait_for(lambda: ev.get("/readyz")[0] == 200, what="ready")
    code, body = ev.get("/metrics")
    text = body.decode()
    assert code == 200
    for name in (
        "kvfs_evictor_leader 1.0",
        "kvfs_evictor_watermark_ratio",
        "kvfs_evictor_metadata_ops_total",
        "kvfs_evictor_journal_backlog_bytes",
    ):
        assert name in text, name
    assert ev.get("/nope")[0] == 404
    status = ev.status()
    assert status["leader"] and status["watermarks"]["high_pct"] == 85
    assert ev.log().lstrip().startswith("{")  # JSON log lines
    # `kvfs evictor status` reads the live service
    out = CliRunner().invoke(evictor_cli, ["status", "--url", f"http://127.0.0.1:{ev.port}"])
    assert out.exit_code == 0, out.output
    assert "leader, ready" in out.output and "high 85.0%, low 70.0% of 953.7 MiB" in out.output
    out = CliRunner().invoke(evictor_cli, ["status", "--url", f"http://127.0.0.1:{ev.port}", "--json"])
    assert json.loads(out.output)["leader"] is True
    t0 = time.monotonic()
    assert ev.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5, "SIGTERM must stop the service within seconds"


def test_second_instance_on_sqlite_refused(root: Path, sqlite_url: str, start_evictor) -> None:
    first = start_evictor(root, sqlite_url)
    first.wait_leader()
    second = start_evictor(root, sqlite_url, wait=False)
    assert second.proc.wait(20) == 3
    assert "already runs on the SQLite catalog" in second.log()
    assert first.proc.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root", "{root}/missing", "--catalog", "sqlite:///{tmp}/c.db"], "is not a directory"),
        (["--root", "{root}", "--catalog", "mysql://db/kvfs"], "unsupported catalog URL scheme"),
        (["--root", "{root}", "--catalog", "{root}/catalog.db"], "inside the kvfs root"),
    ],
)
def test_bad_settings_exit_2_with_the_reason(
    root: Path, tmp_path: Path, start_evictor, args, message
) -> None:
    argv = [a.format(root=root, tmp=tmp_path) for a in args]
    ev = start_evictor(Path(argv[1]), argv[3], wait=False)
    assert ev.proc.wait(30) == 2
    assert message in ev.log()


def test_a_catalog_outage_is_counted_whoever_meets_it() -> None:
    """A follower's election may be the only thing that meets an outage (it then holds ingest off until the
    retry time): /readyz turns red through the same backoff, so the counter must move with it."""
    from prometheus_client import REGISTRY

    from evictor.service import Backoff

    def counted() -> float:
        return REGISTRY.get_sample_value("kvfs_evictor_errors_total", {"kind": "catalog"}) or 0.0

    before = counted()
    backoff = Backoff()
    backoff.failed(ConnectionError("election: connection refused"))
    backoff.failed(ConnectionError("election: connection refused"))
    assert backoff.failing and backoff.wait_needed() > 0
    assert counted() == before + 2
    backoff.succeeded()
    assert not backoff.failing and counted() == before + 2
