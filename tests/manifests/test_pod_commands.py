"""The rendered containers' own commands run: the evictor answers its probes and evicts; the CronJob's gc works.

Each test takes a container from a rendered tree and runs exactly its command, arguments, environment and
ConfigMap files (pod_sandbox.py maps its volumes to temporary directories), against a shared directory seeded
with real block files, some older than the configured TTL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import manifest_checks as mc
import pytest
from manifest_render import rendered
from pod_sandbox import REPO, PodSandbox, free_port, http_get
from promql_checks import selected_metrics

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.journal import JournalWriter
from kvfs.layout import (
    BlockKey,
    fingerprint_sha256,
    kvfs_fields,
    namespace_name,
    parse_block_relpath,
    write_namespace_config,
)

pytestmark = pytest.mark.slow

SHARED = "/mnt/files-storage"
DAY = 86400.0


def seed(root: Path, *, old: int, fresh: int, age: float) -> tuple[set[str], set[str]]:
    """Block files under `root`: `old` of them last used `age` seconds ago, `fresh` ones just now."""
    fields = kvfs_fields({"model_name": "org/model", "block_size": 16, "dtype": "bfloat16"})
    write_namespace_config(root, fields)
    ns, fp = namespace_name(fields), fingerprint_sha256(fields)
    made: tuple[set[str], set[str]] = (set(), set())
    for n in range(old + fresh):
        key = BlockKey(ns, 0, 0, f"{n:03x}{n:02x}{n:027x}", "kvfs")
        path = root / key.relpath()
        assert (
            store_block(path, bytes([n]) * 4096, BlockIdentity(fp, n.to_bytes(8, "big"))).outcome
            is StoreOutcome.STORED
        )
        if n < old:
            then = time.time() - age
            os.utime(path, (then, then))
        made[0 if n < old else 1].add(key.relpath())
    return made


def present(root: Path, relpaths: set[str]) -> set[str]:
    return {r for r in relpaths if (root / r).exists()}


def wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        time.sleep(0.2)
    return value


def test_base_evictor_serves_its_probes_evicts_by_ttl_and_stops_in_its_grace_period(tmp_path: Path) -> None:
    docs = list(rendered("base"))
    (w,) = mc.evictors(docs)
    ttl = mc.evictor_settings(docs, w).ttl
    assert ttl, "the base configures a TTL"
    pod = PodSandbox(docs, w, tmp_path / "volumes")
    root = pod.path(SHARED)
    old, fresh = seed(root, old=6, fresh=4, age=ttl + DAY)
    port = free_port()  # the configured port is checked statically; a free one avoids clashes on this machine
    log_path = tmp_path / "evictor.log"
    with open(log_path, "wb") as log:
        proc = pod.start(log, KVFS_METRICS_PORT=str(port), KVFS_METRICS_HOST="127.0.0.1")
        try:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = w.container[probe]["httpGet"]["path"]
                wait(
                    lambda p=path: http_get(port, p)[0] == 200 or proc.poll() is not None,
                    60,
                    f"{probe} {path}",
                )
                assert proc.poll() is None, log_path.read_text()
            # The TTL in the ConfigMap evicts the old blocks; the grace window keeps the fresh ones.
            wait(lambda: not present(root, old), 60, "the blocks older than the TTL to be evicted")
            assert present(root, fresh) == fresh
            # What the ServiceMonitor scrapes carries every evictor-side metric the dashboard charts.
            (monitor,) = mc.find(docs, "ServiceMonitor", "kvfs-evictor")
            code, body = http_get(port, monitor["spec"]["endpoints"][0]["path"])
            assert code == 200
            families = {_base(line.split()[2]) for line in body.splitlines() if line.startswith("# TYPE ")}
            dashboard = json.loads((REPO / "manifests/grafana/kvfs-dashboard.json").read_text())
            wanted = {
                name
                for panel in dashboard["panels"]
                for t in panel.get("targets", [])
                if "$evictor_job" in t["expr"]
                for name in _families(t["expr"])
            }
            assert wanted and wanted <= families, sorted(wanted - families)
        finally:
            grace = w.pod.get("terminationGracePeriodSeconds", 30)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"the evictor ignored SIGTERM for the pod's whole grace period ({grace}s)")
    assert code == 0, log_path.read_text()
    assert time.monotonic() - started < grace


def _base(name: str) -> str:
    """A sample or family name without Prometheus' type suffixes (exposition formats differ on `_total`)."""
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _families(expr: str) -> set[str]:
    return {_base(name) for name in selected_metrics(expr)}


def test_gc_cronjobs_evict_from_journals_remove_them_and_the_daily_scan_finds_the_rest(
    tmp_path: Path,
) -> None:
    docs = list(rendered("gc-cronjob"))
    jobs = {w.obj["metadata"]["name"]: w for w in mc.cli_jobs(docs)}
    frequent = PodSandbox(docs, jobs["kvfs-gc"], tmp_path / "volumes")
    daily = PodSandbox(docs, jobs["kvfs-gc-scan"], tmp_path / "volumes")  # the same volumes
    _, gc = mc.cli_invocation(jobs["kvfs-gc"])
    root = frequent.path(SHARED)
    age = gc.params["ttl"] + DAY
    old, fresh = seed(root, old=5, fresh=3, age=age)
    # The engines journal their stores; a stock writer (no journal) left two old .bin files.
    with JournalWriter(root, writer_id="engine") as journal:
        for rel in sorted(old | fresh):
            key = parse_block_relpath(rel)
            assert key is not None
            journal.record_store(key, 8192, now=os.stat(root / rel).st_mtime)
    stock = set()
    for n in range(2):
        rel = f"org_stock_0123456789ab/aaa/0{n}_g0/aaa0{n}{n:027x}.bin"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(b"s" * 4096)
        os.utime(root / rel, (time.time() - age, time.time() - age))
        stock.add(rel)

    result = frequent.run(timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deleted_files"] == len(old) and report["scan"] is None  # journals only, no walk
    assert not present(root, old) and present(root, fresh) == fresh and present(root, stock) == stock
    assert not list((root / ".kvfs" / "journal").iterdir())  # applied segments removed

    result = daily.run(timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scan"] is not None and report["deleted_files"] == len(stock)
    assert not present(root, stock) and present(root, fresh) == fresh
    # A second run has nothing left to do, from the catalog on the jobs' persistent volume.
    again = json.loads(frequent.run(timeout=120).stdout)
    assert again["deleted_files"] == 0
    assert any(p.name.startswith("catalog.db") for p in frequent.path("/var/lib/kvfs").iterdir())


@pytest.mark.postgres
def test_postgres_evictor_runs_on_the_catalog_from_its_secret(tmp_path: Path, pg_url: str) -> None:
    docs = list(rendered("postgres"))
    (w,) = mc.evictors(docs)
    assert mc.secret_env(w.container)["KVFS_CATALOG"]["name"] == "kvfs-catalog"
    pod = PodSandbox(docs, w, tmp_path / "volumes")
    seed(pod.path(SHARED), old=0, fresh=2, age=0)
    port = free_port()
    log_path = tmp_path / "evictor.log"
    with open(log_path, "wb") as log:
        # The Secret's value: the test database stands in for the site's.
        proc = pod.start(log, KVFS_CATALOG=pg_url, KVFS_METRICS_PORT=str(port), KVFS_METRICS_HOST="127.0.0.1")
        try:
            path = w.container["readinessProbe"]["httpGet"]["path"]
            wait(lambda: http_get(port, path)[0] == 200 or proc.poll() is not None, 60, "readiness")
            assert proc.poll() is None, log_path.read_text()
            status = json.loads(http_get(port, "/status")[1])
            assert "postgresql" in json.dumps(status)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()
