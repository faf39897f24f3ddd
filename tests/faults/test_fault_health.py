"""/healthz turns red when the leader's eviction passes stop making progress (issue 20: health stayed 200 while
eviction had stopped), and green again when they resume.  The stall is real: another connection holds the SQLite
catalog's write lock while a writer's journal record waits to be ingested, so the pass waits on the lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from evictor_helpers import wait_for
from faultlib import Store

import evictor.service as service_mod
from evictor.service import EvictorService
from evictor.settings import load_settings
from kvfs.journal import JournalWriter


def _unhealthy(service: EvictorService) -> tuple[bool, str] | None:
    ok, why = service.health()
    return None if ok else (ok, why)


def test_health_fails_while_passes_are_stuck_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "STALL_AFTER_S", 1.0)
    root = tmp_path / "root"
    store = Store(root)
    for i in range(4):
        store.block(i, size=3000)
    db = tmp_path / "catalog.db"
    settings = load_settings(
        {
            "root": str(root),
            "catalog": f"sqlite:///{db}",
            "enforce_interval": "0.1s",
            "journal_interval": "0.1s",
            "max_bytes": "1GiB",
            "min_age": "0s",
            "watch": "off",
            "metrics_port": "0",
            "metrics_host": "127.0.0.1",
        },
        environ={},
    )
    service = EvictorService(settings)
    service.start()
    try:
        wait_for(lambda: service.first_pass_at is not None, 30, what="the first pass")
        wait_for(lambda: service.health() == (True, "ok"), 10, what="a healthy leader")
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
        try:
            writer = JournalWriter(root, writer_id="w-health")
            writer.record_access(store.key(1))
            writer.close()  # a record to ingest: the next pass must write, and waits for the lock
            ok, why = wait_for(lambda: _unhealthy(service), 20, what="health to fail")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert not ok and ("no eviction pass for" in why or "stuck" in why), why
        wait_for(lambda: service.health()[0], 60, what="health to recover once the lock is released")
    finally:
        service.stop()
