"""PostgreSQL stopped and started again under a running evictor: a private cluster started by the test with
`initdb`/`pg_ctl` on a free port (the shared server on 5432 is never stopped).  The evictor must report not
ready while the server is down, come back by itself, and lose none of the records journaled meanwhile."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from evictor_helpers import run_writer, wait_for
from faultlib import as_unprivileged, chown_tree

from kvfs.catalog import Catalog

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, base: Path) -> None:
        self.data = base / "pgdata"
        self.sock = base / "pgsock"
        self.log = base / "pg.log"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *argv: str) -> None:
        subprocess.run(as_unprivileged(list(argv)), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.sock.mkdir()
        chown_tree(self.sock.parent)
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def cluster(open_tmp: Path) -> Iterator[Cluster]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl not installed")
    c = Cluster(open_tmp)
    c.init()
    c.start()
    try:
        yield c
    finally:
        if (c.data / "postmaster.pid").exists():
            c.stop("immediate")


def test_postgres_stopped_and_restarted_loses_nothing(
    cluster: Cluster, open_tmp: Path, start_evictor
) -> None:
    root = open_tmp / "store"
    root.mkdir()
    ev = start_evictor(root, cluster.url, "--max-bytes", "1G")
    ev.wait_leader()
    now = time.time()
    run_writer(root, "org/model-pg", [now - 100 + i for i in range(5)], payload=1024)
    wait_for(lambda: (ev.status()["usage"] or {}).get("catalog_files") == 5, what="first records ingested")

    cluster.stop()
    run_writer(root, "org/model-pg", [now - 50 + i for i in range(10)], payload=1024, first=5)
    wait_for(lambda: ev.get("/readyz")[0] == 503, timeout=30, what="readyz to report the outage")
    assert ev.get("/healthz")[0] == 200
    time.sleep(1.0)
    cluster.start()

    wait_for(lambda: ev.get("/readyz")[0] == 200, timeout=40, what="readyz to recover")
    wait_for(lambda: ev.status()["leader"], timeout=30, what="leadership after the restart")
    with Catalog.open(cluster.url) as cat:
        wait_for(lambda: cat.block_count() == 15, timeout=30, what="all 15 journaled blocks in the catalog")
        assert sum(row.hits for row in cat.iter_blocks()) == 0  # nothing applied twice
    assert ev.stop() == 0
    assert os.path.isdir(root)
