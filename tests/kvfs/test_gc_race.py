"""`kvfs gc` against real concurrency: a writer process publishing blocks during passes, and a pass SIGKILLed
mid-flight.  Afterwards the tree must be consistent: no corrupt block, no failed store, and one scan brings the
catalog back to exactly what is on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config

pytestmark = pytest.mark.slow

KVFS = [sys.executable, "-m", "kvfs.cli"]
FIELDS = kvfs_fields({"model_name": "org/racer", "block_size": 16})
NS = namespace_name(FIELDS)
FP = fingerprint_sha256(FIELDS)

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from kvfs.blockfile import BlockIdentity, store_block
    from kvfs.journal import JournalWriter
    from kvfs.layout import BlockKey
    root, ns, fp, seconds = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), float(sys.argv[4])
    outcomes = {}
    n = 0
    deadline = time.monotonic() + seconds
    with JournalWriter(root, writer_id="racer") as journal:
        while time.monotonic() < deadline:
            key = BlockKey(ns, 0, 0, f"{n:03x}{n % 256:02x}{n + 10**6:027x}", "kvfs")
            res = store_block(f"{root}/{key.relpath()}", b"w" * 4096, BlockIdentity(fp, b"w%d" % n))
            outcomes[res.outcome.value] = outcomes.get(res.outcome.value, 0) + 1
            if res.outcome.value == "stored":
                journal.record_store(key, 4096 + 4096, chain_pos=n % 16)
            n += 1
    print(json.dumps(outcomes))
    """
)


def kvfs(root: Path, catalog: str, *args: str, check: bool = True) -> dict:
    env = {**os.environ, "KVFS_ROOT": str(root), "KVFS_CATALOG": catalog}
    proc = subprocess.run([*KVFS, *args, "--json"], env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def seed(root: Path, count: int) -> None:
    write_namespace_config(root, FIELDS)
    for n in range(count):
        key = BlockKey(NS, 0, 0, f"{n:03x}{n % 256:02x}{n:027x}", "kvfs")
        path = root / key.relpath()
        assert store_block(path, b"s" * 1024, BlockIdentity(FP, b"s%d" % n)).outcome is StoreOutcome.STORED
        stamp = time.time() - 3600 + n  # block n is n seconds younger than block 0
        os.utime(path, (stamp, stamp))


def on_disk(root: Path) -> int:
    return sum(1 for p in root.rglob("*.kvfs") if p.is_file() and not p.is_symlink())


def assert_consistent(root: Path, catalog: str) -> None:
    """One scan reconciles the catalog with the tree, and every block left is sound."""
    kvfs(root, catalog, "scan")
    du = kvfs(root, catalog, "du")
    assert du["total_files"] == on_disk(root)
    verify = kvfs(root, catalog, "verify")
    assert verify["corrupt"] == [] and verify["checked"] == du["total_files"]


def test_gc_passes_while_a_writer_publishes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    seed(root, 600)
    kvfs(root, catalog, "scan")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), NS, FP.hex(), "4"], stdout=subprocess.PIPE, text=True
    )
    try:
        passes = []
        while writer.poll() is None:
            passes.append(kvfs(root, catalog, "gc", "--policy", "lru", "--max-bytes", str(300 * 5120)))
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    outcomes = json.loads(out)
    assert outcomes.get("failed", 0) == 0 and outcomes["stored"] > 0
    assert passes and sum(p["deleted_files"] for p in passes) > 0
    assert all(p["refused"] == 0 and p["errors"] == 0 for p in passes)
    # Nothing the writer had in flight was touched: no temp file was removed under it (no failed store), and
    # the blocks it published are either still there, sound, or were evicted whole.
    assert_consistent(root, catalog)


def test_gc_sigkilled_mid_pass_leaves_a_consistent_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    total = 3000
    seed(root, total)
    kvfs(root, catalog, "scan")
    oldest = root / BlockKey(NS, 0, 0, f"{0:03x}{0:02x}{0:027x}", "kvfs").relpath()
    env = {**os.environ, "KVFS_ROOT": str(root), "KVFS_CATALOG": catalog}
    gc = subprocess.Popen(
        [*KVFS, "gc", "--policy", "lru", "--max-bytes", "0"], env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while oldest.exists() and gc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    # Deletion has started (the oldest block goes first): kill the pass without warning.
    gc.send_signal(signal.SIGKILL)
    gc.wait(timeout=30)
    left = on_disk(root)
    assert left < total
    assert_consistent(root, catalog)
    # A fresh pass finishes the job from the reconciled catalog.
    done = kvfs(root, catalog, "gc", "--max-bytes", "0")
    assert done["deleted_files"] == left and on_disk(root) == 0
