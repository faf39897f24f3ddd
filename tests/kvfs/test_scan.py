"""Scan: a real tree with both block formats, ranks, garbage, temp orphans and planted symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import BlockRow, Catalog
from kvfs.fsusage import allocated_bytes
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import (
    BlockKey,
    fingerprint_sha256,
    journal_dir,
    kvfs_fields,
    namespace_name,
    write_namespace_config,
)
from kvfs.scan import ScanError, TempFile, scan_tree, walk_tree

KVFS_FIELDS = kvfs_fields({"model_name": "org/llama", "dtype": "bfloat16", "block_size": 16})
BIN_FIELDS = {"model_name": "org/qwen", "dtype": "float16", "block_size": 16}
KVFS_NS = namespace_name(KVFS_FIELDS)
BIN_NS = namespace_name(BIN_FIELDS)
OLD = 1_600_000_000.0  # a fixed past time for utime


def h(n: int) -> str:
    return f"{n:032x}"[::-1]  # spread over buckets


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def put_kvfs(root: Path, key: BlockKey, payload: bytes = b"x" * 100) -> Path:
    path = root / key.relpath()
    ident = BlockIdentity(fingerprint_sha256(KVFS_FIELDS), bytes.fromhex(key.block_hash))
    assert store_block(path, payload, ident).outcome == StoreOutcome.STORED
    return path


def put_bin(root: Path, key: BlockKey, size: int = 64) -> Path:
    path = root / key.relpath()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


class Tree:
    """The reference tree and what a scan must find in it."""

    def __init__(self, root: Path, outside: Path) -> None:
        self.root = root
        self.keys: dict[BlockKey, int] = {}
        write_namespace_config(root, KVFS_FIELDS)
        write_namespace_config(root, BIN_FIELDS)
        for i in range(6):
            key = BlockKey(KVFS_NS, None, i % 2, h(i), "kvfs")
            self.keys[key] = put_kvfs(root, key).stat().st_size
        for rank in (0, 1):
            for i in range(4):
                key = BlockKey(BIN_NS, rank, 0, h(100 + i), "bin")
                self.keys[key] = put_bin(root, key, 64 + i).stat().st_size
        for key in self.keys:  # written "long ago", outside the prune grace of a scan
            os.utime(root / key.relpath(), (OLD, OLD))
        leaf = (root / next(iter(self.keys)).relpath()).parent
        bin_leaf = (root / BlockKey(BIN_NS, 0, 0, h(100), "bin").relpath()).parent

        # Not blocks: 9 entries, each counted once (directories are not descended into).
        (root / "README").write_text("hi")  # 1: a file at the top
        (root / "lost+found").mkdir()  # 2: a foreign directory
        (root / "lost+found" / "x.bin").write_text("x")  # inside it: not walked
        (leaf / "notes.txt").write_text("x")  # 3
        (leaf / ("A" * 32 + ".kvfs")).write_text("x")  # 4: upper-case hex
        wrong = h(999)  # 5: a block name in the wrong bucket
        (leaf / f"{wrong}.kvfs").write_text("x")
        (leaf / f"{h(500)}.kvfs").mkdir()  # 6: a directory named like a block
        (root / KVFS_NS / "zzz").mkdir()  # 7: not a bucket
        (root / f"{BIN_NS}_r0" / "config.json").write_text(
            "{}"
        )  # 8: config.json belongs in the rank-less dir
        (root / KVFS_NS / next(iter(self.keys)).block_hash[:3] / "ab_gX").mkdir()  # 9: bad second level
        self.not_blocks = 9

        # Symlinks (never followed, each counted as not a block): 4 more.
        (outside / "victim").mkdir()
        victim_key = BlockKey(KVFS_NS, None, 0, h(777), "kvfs")
        put_kvfs(outside / "victim", victim_key)
        (root / f"{KVFS_NS}_r7").symlink_to(outside / "victim" / KVFS_NS)  # namespace-like symlink
        (root / KVFS_NS / "fff").symlink_to(outside / "victim" / KVFS_NS / h(777)[:3])  # bucket symlink
        link_key = BlockKey(KVFS_NS, None, 0, h(0)[:3] + h(0)[3:5] + "9" * 27, "kvfs")
        (root / link_key.relpath()).symlink_to(outside / "victim" / victim_key.relpath())  # block-named link
        (bin_leaf / "dangling.bin").symlink_to(outside / "nothing")
        self.not_blocks += 4

        # The journal directory is kvfs's own: neither blocks nor "not blocks".
        journal_dir(root).mkdir(parents=True)
        (journal_dir(root) / "w.00000001.jnl").write_bytes(b"\0" * 10)

        # Temp orphans: a block writer's and a config writer's.
        self.orphans = sorted(
            [
                self._tmp(leaf / f"{h(0)}.kvfs_deadbeef.tmp", 33),
                self._tmp(root / BIN_NS / "config.json_0123.tmp", 5),
            ]
        )

    def _tmp(self, path: Path, size: int) -> str:
        path.write_bytes(b"t" * size)
        os.utime(path, (OLD, OLD))
        return str(path.relative_to(self.root))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return Tree(tmp_path / "root", tmp_path / "outside")


def test_scan_finds_exactly_the_blocks(tree: Tree, catalog_url: str) -> None:
    not_a_block_before = counter("kvfs_not_a_block_total")
    with Catalog.open(catalog_url) as catalog:
        result = scan_tree(tree.root, catalog, threads=3)
        assert result.files == len(tree.keys)
        assert result.bytes == sum(tree.keys.values())
        assert result.blocks_added == len(tree.keys)
        assert result.blocks_removed == 0
        assert result.not_blocks == tree.not_blocks
        assert result.errors == 0
        assert [o.relpath for o in result.temp_files] == tree.orphans
        assert all(o.mtime == OLD for o in result.temp_files)
        assert {o.size for o in result.temp_files} == {33, 5}
        assert {r.key: r.size for r in catalog.iter_blocks()} == tree.keys
        infos = {i.name: i for i in catalog.namespaces()}
        assert set(infos) == {KVFS_NS, BIN_NS}
        assert (infos[KVFS_NS].model, infos[KVFS_NS].fmt) == ("org/llama", "kvfs")
        assert infos[KVFS_NS].fingerprint == fingerprint_sha256(KVFS_FIELDS).hex()
        assert (infos[BIN_NS].model, infos[BIN_NS].fmt) == ("org/qwen", "bin")
        assert counter("kvfs_not_a_block_total") - not_a_block_before == tree.not_blocks

        again = scan_tree(tree.root, catalog)
        assert (again.files, again.blocks_added, again.blocks_removed) == (len(tree.keys), 0, 0)


def test_symlinked_targets_are_untouched_and_unlisted(tree: Tree, sqlite_url: str) -> None:
    with Catalog.open(sqlite_url) as catalog:
        scan_tree(tree.root, catalog)
        hashes = {r.key.block_hash for r in catalog.iter_blocks()}
    assert h(777) not in hashes
    assert all(not k.namespace.endswith("_r7") for k in tree.keys)


def test_removed_files_are_dropped_but_blocks_written_during_the_scan_survive(
    tree: Tree, sqlite_url: str
) -> None:
    with Catalog.open(sqlite_url) as catalog:
        scan_tree(tree.root, catalog)
        gone = [k for k in tree.keys if k.fmt == "bin"][:3]
        for key in gone:
            (tree.root / key.relpath()).unlink()
        # Journaled but not yet on disk when walked (a write racing the scan): created now, never seen.
        racing = BlockKey(KVFS_NS, None, 0, h(4242), "kvfs")
        catalog.upsert_blocks([BlockRow(racing, 1, created=time.time(), last_access=time.time())])
        # Known from an old journal record, file long gone.
        stale = BlockKey(KVFS_NS, None, 0, h(4343), "kvfs")
        catalog.upsert_blocks([BlockRow(stale, 1, created=OLD, last_access=OLD)])
        result = scan_tree(tree.root, catalog)
        keys = {r.key for r in catalog.iter_blocks()}
    assert result.blocks_removed == len(gone) + 1
    assert keys == (set(tree.keys) - set(gone)) | {racing}


def test_new_files_take_recency_from_atime_or_mtime(tree: Tree, sqlite_url: str) -> None:
    newer_atime, newer_mtime, journaled = list(tree.keys)[:3]
    os.utime(tree.root / newer_atime.relpath(), (OLD + 500, OLD + 100))
    os.utime(tree.root / newer_mtime.relpath(), (OLD + 100, OLD + 300))
    os.utime(tree.root / journaled.relpath(), (OLD + 100, OLD + 100))
    with Catalog.open(sqlite_url) as catalog:
        # A block the journal already knows with a more recent access than the file's times.
        catalog.upsert_blocks(
            [BlockRow(journaled, tree.keys[journaled], created=OLD, last_access=OLD + 9000)]
        )
        scan_tree(tree.root, catalog)
        rows = catalog.get_blocks([newer_atime, newer_mtime, journaled])
    assert (rows[newer_atime].created, rows[newer_atime].last_access) == (OLD + 100, OLD + 500)
    assert (rows[newer_mtime].created, rows[newer_mtime].last_access) == (OLD + 300, OLD + 300)
    assert (rows[journaled].created, rows[journaled].last_access) == (OLD, OLD + 9000)


@pytest.mark.parametrize("level", ["namespace", "bucket", "leaf"])
def test_unreadable_directory_keeps_its_namespace_rows(
    tree: Tree, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    with Catalog.open(sqlite_url) as catalog:
        scan_tree(tree.root, catalog)
        real_scandir = os.scandir
        leaf = (tree.root / BlockKey(BIN_NS, 1, 0, h(100), "bin").relpath()).parent
        bucket = {"namespace": leaf.parent.parent, "bucket": leaf.parent, "leaf": leaf}[level]

        def failing_scandir(path):  # type: ignore[no-untyped-def]
            if os.fspath(path) == str(bucket):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr("kvfs.scan.os.scandir", failing_scandir)
        errors_before = counter("kvfs_scan_errors_total")
        result = scan_tree(tree.root, catalog)
        assert result.errors == 1
        assert counter("kvfs_scan_errors_total") - errors_before == 1
        assert result.blocks_removed == 0  # its rows were not seen, but the namespace is kept whole
        assert {r.key for r in catalog.iter_blocks()} == set(tree.keys)


def test_missing_root(tmp_path: Path, sqlite_url: str) -> None:
    with Catalog.open(sqlite_url) as catalog:
        with pytest.raises(ScanError, match="does not exist"):
            scan_tree(tmp_path / "nope", catalog)
        (tmp_path / "file").write_text("x")
        with pytest.raises(ScanError, match="not a directory"):
            scan_tree(tmp_path / "file", catalog)


def test_empty_root(tmp_path: Path, sqlite_url: str) -> None:
    (tmp_path / "root").mkdir()
    with Catalog.open(sqlite_url) as catalog:
        result = scan_tree(tmp_path / "root", catalog)
    assert (result.files, result.bytes, result.not_blocks, result.temp_files) == (0, 0, 0, [])


def test_progress_is_quiet_without_a_tty(
    tree: Tree, sqlite_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with Catalog.open(sqlite_url) as catalog:
        scan_tree(tree.root, catalog, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_walk_tree_reports_progress(tree: Tree) -> None:
    seen: list[tuple[int, int]] = []
    batches = list(walk_tree(tree.root, threads=2, on_bucket=lambda d, t: seen.append((d, t))))
    assert sum(len(b.blocks) for b in batches) == len(tree.keys)
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert isinstance(batches[0].orphans[0], TempFile)


def test_small_batches(tree: Tree, sqlite_url: str) -> None:
    with Catalog.open(sqlite_url) as catalog:
        result = scan_tree(tree.root, catalog, batch_size=1)
        assert result.files == catalog.block_count() == len(tree.keys)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from kvfs.catalog import Catalog
    from kvfs.journal import JournalRecord, RecordKind
    from kvfs.layout import BlockKey

    root, url, ns, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    catalog = Catalog.open(url)
    print("ready", flush=True)
    for i in range(n):
        key = BlockKey(ns, None, 0, f"{i:032x}"[::-1], "bin")
        path = os.path.join(root, key.relpath())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".w.tmp", "wb") as fh:
            fh.write(b"z" * 10)
        os.rename(path + ".w.tmp", path)
        catalog.apply_journal([JournalRecord(RecordKind.STORE, key, time.time(), size=10)], {"w.jnl": i + 1})
    print("done", flush=True)
    """
)


def test_scan_racing_a_journaling_writer_loses_nothing(tmp_path: Path, sqlite_url: str) -> None:
    """A real writer process stores and journals blocks while scans run: no existing file's row is dropped."""
    root = tmp_path / "root"
    root.mkdir()
    ns = namespace_name({"model_name": "race/model"})
    Catalog.open(sqlite_url).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), sqlite_url, ns, "1500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    scans = 0
    with Catalog.open(sqlite_url) as catalog:
        while proc.poll() is None:
            on_disk_before = {p.name.split(".")[0] for p in root.rglob("*.bin")}
            result = scan_tree(root, catalog, threads=2, batch_size=50)
            scans += 1
            # The writer never deletes: a scan must never drop a row, however the walk and the writes interleave.
            assert result.blocks_removed == 0
            assert on_disk_before <= {r.key.block_hash for r in catalog.iter_blocks()}
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        on_disk = {p.name.split(".")[0] for p in root.rglob("*.bin")}
        in_catalog = {r.key.block_hash for r in catalog.iter_blocks()}
    assert scans >= 2
    assert len(on_disk) == 1500
    assert in_catalog == on_disk


def test_thread_default_follows_the_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvfs import scan

    assert scan.default_threads(tmp_path) == scan.LOCAL_THREADS
    monkeypatch.setattr(scan, "filesystem_type", lambda path: "nfs4")
    assert scan.default_threads(tmp_path) == scan.NETWORK_THREADS


def test_rescan_refreshes_changed_files_only(tree: Tree, catalog_url: str) -> None:
    grown, read_since, untouched = [k for k in tree.keys if k.fmt == "bin"][:3]
    with Catalog.open(catalog_url) as catalog:
        scan_tree(tree.root, catalog)
        (tree.root / grown.relpath()).write_bytes(b"g" * 4000)  # a stock writer replaced the file
        os.utime(tree.root / grown.relpath(), (OLD, OLD))
        os.utime(tree.root / read_since.relpath(), (OLD + 7000, OLD))  # a journal-less reader touched atime
        catalog.upsert_blocks([BlockRow(untouched, tree.keys[untouched], OLD, OLD + 9000)])  # journal: newer
        result = scan_tree(tree.root, catalog)
        rows = catalog.get_blocks([grown, read_since, untouched])
    assert (result.blocks_added, result.blocks_removed) == (0, 0)
    assert (rows[grown].size, rows[grown].last_access) == (4000, OLD)
    assert (rows[read_since].size, rows[read_since].last_access) == (tree.keys[read_since], OLD + 7000)
    assert rows[untouched].last_access == OLD + 9000  # never lowered by older file times


def test_rescan_keeps_a_journaled_kvfs_blocks_recency(tree: Tree, catalog_url: str) -> None:
    """A kvfs writer journals its stores with the request's time, earlier than the file's mtime (when the file
    finished): a rescan must not raise it to the mtime (a chain's head finishing first would become younger than
    its tail, and every rescan rewrote every unread row).  New kvfs files still get the file's times; a stock file's
    atime still counts (no journal)."""
    kvfs_keys = [k for k in tree.keys if k.fmt == "kvfs"][:2]
    journaled, replaced = kvfs_keys
    stamp = OLD - 50.0
    with Catalog.open(catalog_url) as catalog:
        # The request's time: before the files' mtimes (OLD).
        catalog.apply_journal(
            [JournalRecord(RecordKind.STORE, k, stamp, tree.keys[k], 2) for k in kvfs_keys], {}
        )
        scan_tree(tree.root, catalog)
        os.utime(tree.root / journaled.relpath(), (OLD + 500, OLD + 400))  # read (atime) and a later mtime
        (tree.root / replaced.relpath()).write_bytes(b"r" * 5000)  # replaced: its size changes
        scan_tree(tree.root, catalog)
        rows = catalog.get_blocks(kvfs_keys)
        added = catalog.get_blocks([k for k in tree.keys if k.fmt == "kvfs"][2:])
    assert (rows[journaled].last_access, rows[journaled].chain_pos) == (stamp, 2)
    size = allocated_bytes(os.stat(tree.root / replaced.relpath()))
    assert (rows[replaced].last_access, rows[replaced].size) == (stamp, size)
    assert {row.last_access for row in added.values()} == {OLD}  # found by the scan: the file's time


def test_progress_bar_on_a_terminal(tree: Tree, sqlite_url: str) -> None:
    """With stderr on a real pseudo-terminal the scan draws a progress bar there."""
    import pty

    script = textwrap.dedent(
        """
        import sys
        from kvfs.catalog import Catalog
        from kvfs.scan import scan_tree
        with Catalog.open(sys.argv[2]) as catalog:
            result = scan_tree(sys.argv[1], catalog, progress=True)
        print("files", result.files)
        """
    )
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tree.root), sqlite_url],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    out, _ = proc.communicate(timeout=60)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child has exited and the buffer is drained
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert out.strip() == f"files {len(tree.keys)}"
    assert b"scanning" in drawn and f"{len(tree.keys)} blocks".encode() in drawn
