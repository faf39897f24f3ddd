"""Issue 20, item 3: sizes chosen by the writer.  A STORE record claiming 1 TiB for a block with no file, or
for a small file, or a sparse 1 TiB file found by a scan, made a capacity pass delete another namespace's
blocks.  Sizes that drive deletion must be what the filesystem holds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from click.testing import CliRunner
from faultlib import Store, sample, segment_bytes, write_segment

from kvfs.catalog import Catalog
from kvfs.cli import main
from kvfs.journal import JournalRecord, RecordKind

TIB = 1 << 40


def _victim_and_writer(tmp_path: Path) -> tuple[Store, Store, list[Path], list[str]]:
    victim = Store(tmp_path / "root", model="org/victim")
    writer = Store(tmp_path / "root", model="org/writer")
    files = [victim.block(n, size=60_000) for n in range(20)]
    old = time.time() - 3600
    for path in files:
        os.utime(path, (old, old))
    base = ["--root", str(victim.root), "--catalog", f"sqlite:///{tmp_path / 'catalog.db'}"]
    assert CliRunner().invoke(main, [*base, "scan", "--json"]).exit_code == 0
    return victim, writer, files, base


def _gc(base: list[str], max_bytes: int) -> dict[str, object]:
    result = CliRunner().invoke(
        main, [*base, "gc", "--no-scan", "--policy", "lru", "--max-bytes", str(max_bytes), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_store_record_claiming_a_tib_for_a_missing_file_deletes_nothing(tmp_path: Path) -> None:
    victim, writer, files, base = _victim_and_writer(tmp_path)
    cap = 2 * sum(p.stat().st_size for p in files)  # real usage is half the cap
    before = sample("kvfs_journal_store_sizes_corrected_total", reason="no_file")
    write_segment(
        victim.root, "w", segment_bytes(JournalRecord(RecordKind.STORE, writer.key(1), time.time(), TIB))
    )
    out = _gc(base, cap)
    assert out["deleted_files"] == 0
    assert all(p.exists() for p in files)
    assert sample("kvfs_journal_store_sizes_corrected_total", reason="no_file") >= before + 1


def test_store_record_over_claiming_a_small_file_counts_only_its_bytes(tmp_path: Path) -> None:
    victim, writer, files, base = _victim_and_writer(tmp_path)
    cap = 2 * sum(p.stat().st_size for p in files)
    own = writer.block(1, size=1000)
    write_segment(
        victim.root, "w", segment_bytes(JournalRecord(RecordKind.STORE, writer.key(1), time.time(), TIB))
    )
    out = _gc(base, cap)  # gc ingests the journal first
    assert out["deleted_files"] == 0
    assert all(p.exists() for p in files) and own.exists()
    with Catalog.open(base[3]) as catalog:
        assert catalog.get_blocks([writer.key(1)])[writer.key(1)].size == own.stat().st_size


def test_sparse_tib_file_found_by_a_scan_counts_its_allocated_bytes(tmp_path: Path) -> None:
    victim, writer, files, base = _victim_and_writer(tmp_path)
    cap = 2 * sum(p.stat().st_size for p in files)
    sparse = writer.block(1, size=1000)
    with open(sparse, "r+b") as fh:
        fh.truncate(TIB)
    assert CliRunner().invoke(main, [*base, "scan", "--json"]).exit_code == 0
    with Catalog.open(base[3]) as catalog:
        assert catalog.get_blocks([writer.key(1)])[writer.key(1)].size <= os.stat(sparse).st_blocks * 512
    out = _gc(base, cap)
    assert out["deleted_files"] == 0
    assert all(p.exists() for p in files)
