"""Issue 20, item 1: a hostile `config.json` in a namespace-shaped directory (anyone who can write the mount):
a FIFO hung `kvfs scan` and the evictor's start-up scan, a deep JSON array raised RecursionError, a symlink to
/dev/zero or a 4 GiB sparse file raised MemoryError, and a journal record naming such a namespace stopped ingest.
Each must be a counted, skipped input with one log line; scan and ingest go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultlib import Store, env, sample, segment_bytes, write_segment

from kvfs.catalog import Catalog
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import CONFIG_FILENAME, BlockKey, read_namespace_config

EVIL = "evil_0123456789ab"


def _hostile_config(root: Path, kind: str) -> None:
    ns_dir = root / EVIL
    ns_dir.mkdir(parents=True)
    path = ns_dir / CONFIG_FILENAME
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif kind == "deep_small":  # within the size cap: the parser's recursion limit
        path.write_text("[" * 32_000 + "]" * 32_000)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(path, "wb") as fh:
            fh.truncate(4 << 30)
    elif kind == "dir_symlink":  # the namespace directory itself a symlink to one holding a FIFO
        ns_dir.rmdir()
        other = root.parent / "elsewhere"
        other.mkdir()
        os.mkfifo(other / CONFIG_FILENAME)
        ns_dir.symlink_to(other)


KINDS = ["fifo", "deep", "deep_small", "devzero", "sparse", "dir_symlink"]


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_config_json_is_refused_and_scan_and_ingest_go_on(tmp_path: Path, kind: str) -> None:
    """A real `kvfs scan` process: it must finish (old code: hang, RecursionError, MemoryError), ingest the
    journal record naming the hostile namespace and the good one's, and log one line about the file."""
    store = Store(tmp_path / "root")
    store.block(1)
    _hostile_config(store.root, kind)
    now = time.time()
    write_segment(
        store.root,
        "w",
        segment_bytes(
            JournalRecord(RecordKind.STORE, BlockKey(EVIL, None, 0, "ab" * 16, "kvfs"), now, 10),
            JournalRecord(RecordKind.STORE, store.key(1), now, 10),
        ),
    )
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    argv = [sys.executable, "-m", "kvfs.cli", "--root", str(store.root), "--catalog", url, "scan", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["journal_records_ingested"] == 2
    refused = [line for line in proc.stderr.splitlines() if CONFIG_FILENAME in line and "refused" in line]
    assert len(refused) == 1, proc.stderr
    with Catalog.open(url) as catalog:
        assert {ns.name for ns in catalog.namespaces()} >= {EVIL, store.namespace}
        assert catalog.block_count(store.namespace) == 1


REASONS = {"deep": "too_large", "deep_small": "not_json", "devzero": "not_regular", "sparse": "too_large"}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_read_namespace_config_counts_each_refusal(tmp_path: Path, kind: str) -> None:
    _hostile_config(tmp_path, kind)
    reason = REASONS[kind]
    before = sample("kvfs_namespace_configs_refused_total", reason=reason)
    assert read_namespace_config(tmp_path, EVIL) is None
    assert sample("kvfs_namespace_configs_refused_total", reason=reason) == before + 1
