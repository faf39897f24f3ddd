"""Catalog behaviour, every case on SQLite and on PostgreSQL (the `catalog_url` fixture)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from kvfs.catalog import SCHEMA_VERSION, BlockRow, Catalog, CatalogError, default_catalog_url, testing
from kvfs.catalog.catalog import PG_COPY_MIN_ROWS
from kvfs.catalog.engine import parse_catalog_url
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey

NS = "org_model_0123456789ab"
NS2 = "other_model_ba9876543210"


def key(n: int, *, ns: str = NS, rank: int | None = None, group: int = 0, fmt: str = "kvfs") -> BlockKey:
    return BlockKey(ns, rank, group, f"{n:032x}", fmt)  # type: ignore[arg-type]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def cat(catalog_url: str):
    catalog = Catalog.open(catalog_url)
    yield catalog
    catalog.close()


# --- opening and schema ------------------------------------------------------------------------------------


def test_open_creates_schema_and_reopens(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION
        catalog.upsert_blocks([BlockRow(key(1), 10, 1.0, 2.0)])
    with Catalog.open(catalog_url) as again:
        assert again.schema_version() == SCHEMA_VERSION
        assert again.block_count() == 1
        tables = testing.tables(again)
    assert {"kvfs_meta", "namespaces", "blocks", "journal_offsets", "evictions", "leases"} <= tables
    assert {"policy_ghosts", "policy_states"} <= tables  # v5


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    with Catalog.open(sqlite_url) as catalog:
        assert testing.scalar(catalog, "PRAGMA journal_mode") == "wal"
        assert testing.scalar(catalog, "PRAGMA synchronous") == 1  # NORMAL


V1_DDL = [
    "CREATE TABLE kvfs_meta (key VARCHAR(64) NOT NULL PRIMARY KEY, value VARCHAR(256) NOT NULL)",
    "CREATE TABLE namespaces (id {serial} PRIMARY KEY, name VARCHAR(512) NOT NULL UNIQUE, "
    "model VARCHAR(512), fingerprint VARCHAR(64), fmt VARCHAR(8), created FLOAT NOT NULL, quota_bytes BIGINT, "
    "retired BOOLEAN NOT NULL)",
    "CREATE TABLE blocks (id {serial} PRIMARY KEY, namespace_id INTEGER NOT NULL REFERENCES namespaces(id), "
    "rank INTEGER NOT NULL, grp INTEGER NOT NULL, block_hash VARCHAR(128) NOT NULL, fmt VARCHAR(8) NOT NULL, "
    "size BIGINT NOT NULL, created FLOAT NOT NULL, last_access FLOAT NOT NULL, hits BIGINT NOT NULL, "
    "chain_pos INTEGER NOT NULL, state INTEGER NOT NULL, "
    "CONSTRAINT uq_blocks_key UNIQUE (namespace_id, rank, grp, block_hash, fmt))",
    "CREATE INDEX ix_blocks_ns_lru ON blocks (namespace_id, last_access, size)",
    "CREATE INDEX ix_blocks_lru ON blocks (last_access)",
    'CREATE TABLE journal_offsets (segment VARCHAR(255) NOT NULL PRIMARY KEY, "offset" BIGINT NOT NULL, '
    "updated FLOAT NOT NULL)",
    "CREATE TABLE evictions (id {serial} PRIMARY KEY, time FLOAT NOT NULL, namespace VARCHAR(512) NOT NULL, "
    "reason VARCHAR(32) NOT NULL, files BIGINT NOT NULL, bytes BIGINT NOT NULL)",
    "INSERT INTO kvfs_meta (key, value) VALUES ('schema_version', '1')",
    f"INSERT INTO namespaces (id, name, model, created, retired) VALUES (1, '{NS}', 'org/model', 5.0, false)",
    "INSERT INTO blocks (namespace_id, rank, grp, block_hash, fmt, size, created, last_access, hits, chain_pos, "
    f"state) VALUES (1, -1, 0, '{1:032x}', 'kvfs', 100, 1.0, 7.0, 3, 2, 0)",
    "INSERT INTO journal_offsets (segment, \"offset\", updated) VALUES ('w1.00000001.jnl', 4096, 1.0)",
]


def _raw_engine(catalog_url: str):  # type: ignore[no-untyped-def]
    return create_engine(parse_catalog_url(catalog_url))


def test_upgrade_from_version_1_keeps_data(catalog_url: str) -> None:
    engine = _raw_engine(catalog_url)
    with engine.begin() as conn:
        serial = "INTEGER" if conn.dialect.name == "sqlite" else "SERIAL"
        for ddl in V1_DDL:
            conn.execute(text(ddl.replace("{serial}", serial)))
    engine.dispose()

    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION == 9
        rows = list(catalog.iter_blocks())
        assert [(r.key, r.size, r.last_access, r.hits, r.chain_pos) for r in rows] == [
            (key(1), 100, 7.0, 3, 2)
        ]
        assert catalog.journal_offsets() == {"w1.00000001.jnl": 4096}
        assert testing.tables(catalog) >= {"leases", "policy_ghosts", "policy_states"}
        # v6: the namespace quota and retired columns are gone (quotas and retirement are settings).
        assert not {"quota_bytes", "retired"} & testing.columns(catalog, "namespaces")
        assert [ns.model for ns in catalog.namespaces()] == ["org/model"]
        # v3: the prefix-chain columns and the policy's partial indexes.
        indexes = testing.indexes(catalog, "blocks")
        assert indexes >= {
            "ix_blocks_parent",
            "ix_blocks_fresh_lru",
            "ix_blocks_reused_lru",
            "ix_blocks_orphan_lru",
            "ix_blocks_superseded_lru",  # v4
            "ix_blocks_branch",  # v7
        }
        child = BlockRow(key(2), 100, created=8.0, last_access=200.0, chain_pos=3, parent_hash=f"{1:032x}")
        catalog.upsert_blocks([child])
        # The v2 column works: a scan generation prunes the unseen old row; the v3 ones: the child of the
        # pruned block (used recently, so kept) is an orphan.
        assert catalog.prune_missing(100.0, grace=0) == 1
        assert orphans(catalog) == {2}


def test_newer_schema_is_refused(catalog_url: str) -> None:
    Catalog.open(catalog_url).close()
    engine = _raw_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE kvfs_meta SET value = :v WHERE key = 'schema_version'"), {"v": "99"})
    engine.dispose()
    with pytest.raises(CatalogError, match="version 99 is newer"):
        Catalog.open(catalog_url)


def test_foreign_database_is_refused(catalog_url: str) -> None:
    engine = _raw_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(CatalogError, match="not a kvfs catalog"):
        Catalog.open(catalog_url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported catalog URL scheme"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
        ("postgresql+asyncpg://u@h/db", "unsupported PostgreSQL driver"),
        ("postgresql://postgres@127.0.0.1:1/test", "cannot open catalog postgresql"),
        ("", "empty catalog URL"),
    ],
)
def test_bad_urls_give_one_line_errors(url: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message) as info:
        Catalog.open(url)
    assert "\n" not in str(info.value)


def test_sqlite_file_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CatalogError, match="cannot create the catalog directory"):
        Catalog.open(f"sqlite:///{blocker}/sub/catalog.db")


def test_sqlite_inside_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(CatalogError, match="inside the kvfs root"):
        Catalog.open(str(root / "sub" / "catalog.db"), root=root)
    # Through a symlink too.
    (tmp_path / "alias").symlink_to(root)
    with pytest.raises(CatalogError, match="inside the kvfs root"):
        Catalog.open(str(tmp_path / "alias" / "catalog.db"), root=root)
    assert not (root / "sub").exists()
    # Beside the root is fine.
    Catalog.open(str(tmp_path / "catalog.db"), root=root).close()


def test_bare_path_means_sqlite(tmp_path: Path) -> None:
    with Catalog.open(str(tmp_path / "x" / "c.db")) as catalog:
        assert catalog.dialect == "sqlite"
    assert (tmp_path / "x" / "c.db").is_file()


def test_default_url_honours_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_catalog_url() == f"sqlite:///{tmp_path}/kvfs/catalog.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_catalog_url() == f"sqlite:///{tmp_path}/home/.local/state/kvfs/catalog.db"


# --- namespaces --------------------------------------------------------------------------------------------


def test_namespaces(cat: Catalog) -> None:
    ns_id = cat.ensure_namespace(NS)
    assert cat.ensure_namespace(NS) == ns_id
    assert cat.ensure_namespace(NS, model="org/model", fingerprint="ab" * 32, fmt="kvfs") == ns_id
    other = cat.ensure_namespace(NS2)
    assert other != ns_id
    infos = {i.name: i for i in cat.namespaces()}
    assert infos[NS].model == "org/model" and infos[NS].fingerprint == "ab" * 32 and infos[NS].fmt == "kvfs"
    assert infos[NS2].model == "other_model"


def test_namespace_cache_is_shared_across_catalog_objects(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as a, Catalog.open(catalog_url) as b:
        assert a.ensure_namespace(NS) == b.ensure_namespace(NS)
        b.upsert_blocks([BlockRow(key(1), 1, 1.0, 1.0)])
        assert a.block_count(NS) == 1


# --- block upserts -----------------------------------------------------------------------------------------


def test_upsert_inserts_then_merges(cat: Catalog) -> None:
    assert (
        cat.upsert_blocks([BlockRow(key(1), 100, created=10.0, last_access=20.0, chain_pos=3, hits=1)]) == 1
    )
    # Older access, new size, no chain position: size changes, last_access and chain_pos stay, hits add up.
    cat.upsert_blocks([BlockRow(key(1), 150, created=5.0, last_access=15.0, chain_pos=-1, hits=2)])
    (row,) = cat.iter_blocks()
    assert (row.size, row.created, row.last_access, row.chain_pos, row.hits) == (150, 10.0, 20.0, 3, 3)
    cat.upsert_blocks([BlockRow(key(1), 150, created=5.0, last_access=30.0, chain_pos=7)])
    (row,) = cat.iter_blocks()
    assert (row.last_access, row.chain_pos) == (30.0, 7)


def test_key_fields_are_all_part_of_identity(cat: Catalog) -> None:
    keys = [
        key(1),
        key(1, rank=0),
        key(1, rank=1),
        key(1, group=1),
        key(1, fmt="bin"),
        key(1, ns=NS2),
    ]
    cat.upsert_blocks(BlockRow(k, 10, 1.0, 1.0) for k in keys)
    assert cat.block_count() == len(keys)
    assert {r.key for r in cat.iter_blocks()} == set(keys)
    assert cat.block_count(NS2) == 1
    assert cat.block_count("unknown_000000000000") == 0


def test_large_upsert_spans_chunks(cat: Catalog) -> None:
    n = 25_000  # more than one executemany chunk
    cat.upsert_blocks(BlockRow(key(i), i, 1.0, float(i)) for i in range(n))
    usage = cat.usage()
    assert usage.total_files == n and usage.total_bytes == n * (n - 1) // 2


def test_duplicate_keys_in_one_bulk_batch_merge(cat: Catalog) -> None:
    """Large enough for PostgreSQL's COPY path (one INSERT ... SELECT may not touch a row twice)."""
    rows = [BlockRow(key(i), 1, 1.0, 1.0) for i in range(1000)]
    rows.append(BlockRow(key(1), 99, 0.5, 50.0, chain_pos=4, hits=2))
    rows.append(BlockRow(key(1), 77, 3.0, 40.0, chain_pos=-1, hits=1))
    cat.upsert_blocks(rows)
    row = cat.get_blocks([key(1)])[key(1)]
    assert (row.size, row.created, row.last_access, row.chain_pos, row.hits) == (77, 1.0, 50.0, 4, 3)
    assert cat.block_count() == 1000


def test_remove_blocks(cat: Catalog) -> None:
    cat.upsert_blocks(BlockRow(key(i), 10, 1.0, 1.0) for i in range(5))
    before = counter("kvfs_catalog_rows_removed_total", why="evicted")
    assert cat.remove_blocks([key(0), key(1), key(99), key(1, ns="never_000000000000")]) == 2
    assert cat.block_count() == 3
    assert counter("kvfs_catalog_rows_removed_total", why="evicted") - before == 2
    ids = [r.block_id for r in cat.iter_blocks()]
    assert cat.remove_block_ids(ids[:2]) == 2
    assert cat.block_count() == 1
    assert cat.remove_blocks([]) == 0


def test_prune_missing_spares_seen_and_recent_rows(cat: Catalog) -> None:
    scan_start = 1000.0
    cat.upsert_blocks(
        [BlockRow(key(1), 1, created=10.0, last_access=10.0)], seen=scan_start
    )  # seen by the scan
    cat.upsert_blocks([BlockRow(key(2), 1, created=10.0, last_access=10.0)])  # gone: not seen, old
    cat.upsert_blocks([BlockRow(key(3), 1, created=990.0, last_access=990.0)])  # written during the walk
    cat.upsert_blocks(
        [BlockRow(key(4), 1, created=10.0, last_access=10.0)], seen=500.0
    )  # seen by an older scan
    cat.upsert_blocks([BlockRow(key(5, ns=NS2), 1, created=10.0, last_access=10.0)])  # unreadable namespace
    cat.upsert_blocks([BlockRow(key(6), 1, created=10.0, last_access=995.0)])  # re-stored during the walk
    cat.upsert_blocks([BlockRow(key(7), 1, created=10.0, last_access=939.0)])  # used before the grace window
    assert cat.prune_missing(scan_start, grace=60.0, keep_namespaces=[NS2, "unknown_000000000000"]) == 3
    assert {r.key for r in cat.iter_blocks()} == {key(1), key(3), key(5, ns=NS2), key(6)}


# --- journal -----------------------------------------------------------------------------------------------


def test_apply_journal(cat: Catalog) -> None:
    unknown_before = counter("kvfs_catalog_unknown_accesses_total")
    records = [
        JournalRecord(RecordKind.STORE, key(1), 100.0, size=4096, chain_pos=0),
        JournalRecord(RecordKind.STORE, key(2), 101.0, size=4096, chain_pos=1),
        JournalRecord(RecordKind.ACCESS, key(1), 150.0),
        JournalRecord(RecordKind.ACCESS, key(1), 120.0),
        JournalRecord(RecordKind.ACCESS, key(9), 130.0),  # never stored
        JournalRecord(RecordKind.ACCESS, key(9, ns="never_000000000000"), 130.0),  # unknown namespace
    ]
    stats = cat.apply_journal(records, {"w1.00000001.jnl": 512})
    assert (stats.stores, stats.accesses, stats.unknown_accesses) == (2, 2, 2)
    assert counter("kvfs_catalog_unknown_accesses_total") - unknown_before == 2
    rows = {r.key: r for r in cat.iter_blocks()}
    assert set(rows) == {key(1), key(2)}
    assert (rows[key(1)].created, rows[key(1)].last_access, rows[key(1)].hits) == (100.0, 150.0, 2)
    assert (rows[key(2)].size, rows[key(2)].chain_pos, rows[key(2)].hits) == (4096, 1, 0)
    assert cat.journal_offsets() == {"w1.00000001.jnl": 512}

    # A later batch: a re-store (file rewritten after eviction elsewhere) keeps created, raises last_access.
    cat.apply_journal(
        [
            JournalRecord(RecordKind.STORE, key(1), 200.0, size=8192),
            JournalRecord(RecordKind.ACCESS, key(2), 90.0),
        ],
        {"w1.00000001.jnl": 1024, "w2.00000001.jnl": 64},
    )
    rows = {r.key: r for r in cat.iter_blocks()}
    assert (rows[key(1)].created, rows[key(1)].last_access, rows[key(1)].size) == (100.0, 200.0, 8192)
    assert (rows[key(2)].last_access, rows[key(2)].hits) == (
        101.0,
        1,
    )  # older access: recency kept, hit counted
    assert cat.journal_offsets() == {"w1.00000001.jnl": 1024, "w2.00000001.jnl": 64}


def test_a_large_access_batch_counts_like_a_small_one(cat: Catalog) -> None:
    """As many accesses as ingest reads at once (PostgreSQL stages them with COPY and updates the blocks with one
    UPDATE ... FROM; SQLite runs one UPDATE per key): last_access = max, hits added, unknown keys counted."""
    keys = [
        key(i, rank=i % 2 or None, group=i % 3, fmt="bin" if i % 5 == 0 else "kvfs")
        for i in range(PG_COPY_MIN_ROWS + 100)
    ]
    cat.apply_journal([JournalRecord(RecordKind.STORE, k, 100.0 + i, size=1) for i, k in enumerate(keys)], {})
    records = []
    for i, k in enumerate(keys):  # 1 to 3 reads a block, some older than its store (recency kept)
        records += [JournalRecord(RecordKind.ACCESS, k, 50.0 + 2 * i + j) for j in range(1 + i % 3)]
    records += [JournalRecord(RecordKind.ACCESS, key(10_000 + j), 500.0) for j in range(7)]  # never stored
    records.append(JournalRecord(RecordKind.ACCESS, key(1, ns="never_000000000000"), 500.0))
    unknown_before = counter("kvfs_catalog_unknown_accesses_total")
    stats = cat.apply_journal(records, {"w.jnl": 99})
    assert (stats.stores, stats.accesses, stats.unknown_accesses) == (0, len(records) - 8, 8)
    assert counter("kvfs_catalog_unknown_accesses_total") - unknown_before == 8
    rows = cat.get_blocks(keys)
    for i, k in enumerate(keys):
        assert (rows[k].last_access, rows[k].hits) == (max(100.0 + i, 50.0 + 2 * i + i % 3), 1 + i % 3), k
    assert cat.block_count() == len(keys) and cat.journal_offsets() == {"w.jnl": 99}
    # The stage is emptied: the next batch counts only its own reads.
    cat.apply_journal([JournalRecord(RecordKind.ACCESS, k, 1.0) for k in keys], {})
    assert all(row.hits == 2 + i % 3 for i, row in enumerate(cat.get_blocks(keys)[k] for k in keys))


def flagged(catalog: Catalog, flag: str) -> set[int]:
    with testing.connection(catalog) as conn:
        return {int(h, 16) for (h,) in conn.execute(text(f"SELECT block_hash FROM blocks WHERE {flag}"))}


def orphans(catalog: Catalog) -> set[int]:
    return flagged(catalog, "orphan")


def superseded(catalog: Catalog) -> set[int]:
    return flagged(catalog, "superseded")


def store(n: int, t: float, parent: int | None, *, pos: int, **kw: object) -> JournalRecord:
    """A connector's STORE record of block n behind block `parent`."""
    p = None if parent is None else f"{parent:032x}"
    return JournalRecord(RecordKind.STORE, key(n, **kw), t, 100, pos, p)  # type: ignore[arg-type]


def test_removing_a_block_orphans_its_descendants_until_they_are_used(cat: Catalog) -> None:
    cat.apply_journal(
        [
            store(1, 10.0, None, pos=0),
            store(2, 10.0, 1, pos=1),
            store(3, 10.0, 2, pos=2),
            store(4, 10.0, 1, pos=1, rank=1),  # same parent hash, another rank: another chain
            store(5, 10.0, 1, pos=1, ns=NS2),  # another namespace
            store(6, 10.0, None, pos=1),  # no parent recorded (a writer that does not know it)
        ],
        {},
    )
    assert orphans(cat) == set()
    marks = counter("kvfs_catalog_chain_marks_total", mark="orphan")
    assert cat.remove_blocks([key(1)]) == 1
    assert orphans(cat) == {2, 3}  # the child and the grandchild: neither can be loaded any more
    assert counter("kvfs_catalog_chain_marks_total", mark="orphan") - marks == 2
    # The chain is sent again: 2 is used (its parent was re-stored), 3 not yet.
    cat.apply_journal([store(1, 300.0, None, pos=0), JournalRecord(RecordKind.ACCESS, key(2), 300.0)], {})
    assert orphans(cat) == {3}
    # By row id (the executor's path) and by a scan that found the files gone.
    cat.apply_journal([store(7, 400.0, None, pos=0), store(8, 400.0, 7, pos=1)], {})
    (seven,) = [r.block_id for r in cat.iter_blocks() if r.key == key(7)]
    assert seven is not None and cat.remove_block_ids([seven]) == 1
    assert orphans(cat) == {3, 8}
    cat.upsert_blocks([BlockRow(key(9, ns=NS2), 100, created=1.0, last_access=1.0, chain_pos=0)])
    cat.apply_journal([store(10, 500.0, 9, pos=1, ns=NS2)], {})
    # 9's file is gone (never seen by the scan, old); 10 was used during the walk and stays.
    assert cat.prune_missing(450.0, grace=0, keep_namespaces=[NS]) == 2  # 9 and 5
    assert orphans(cat) == {3, 8, 10}


def test_a_new_sibling_supersedes_never_read_childless_leaves(cat: Catalog) -> None:
    marks_before = counter("kvfs_catalog_chain_marks_total", mark="superseded")

    def access(n: int, t: float) -> JournalRecord:
        return JournalRecord(RecordKind.ACCESS, key(n), t)

    # Under 1: a leaf (2), a block with a child (3 -> 4), a leaf already read (5), the same parent hash in
    # another rank (6) and another namespace (7).
    cat.apply_journal(
        [
            store(1, 10.0, None, pos=0),
            store(2, 10.0, 1, pos=1),
            store(3, 11.0, 1, pos=1),
            store(4, 11.0, 3, pos=2),
            store(5, 12.0, 1, pos=1),
            store(6, 12.0, 1, pos=1, rank=1),
            store(7, 12.0, 1, pos=1, ns=NS2),
        ],
        {},
    )
    # Within one batch, the later children of 1 already supersede the earlier leaf 2.
    assert superseded(cat) == {2}
    cat.apply_journal([access(5, 13.0)], {})
    cat.apply_journal([access(1, 20.0), store(8, 20.0, 1, pos=1)], {})
    assert superseded(cat) == {2}  # 3 has a child, 5 was read, 6 and 7 are other chains, 8 is the new one
    cat.apply_journal([store(9, 30.0, 1, pos=1)], {})
    assert superseded(cat) == {2, 8}
    # Read again: live after all.  A re-store over it also counts as use.
    cat.apply_journal([access(2, 40.0)], {})
    assert superseded(cat) == {8}
    cat.apply_journal([store(8, 41.0, 1, pos=1)], {})  # ... and is a newer sibling of 9
    assert superseded(cat) == {9}
    # A superseded leaf that gets a child (stored by a writer that did not read it from files) is no leaf.
    cat.apply_journal([store(10, 50.0, 9, pos=2)], {})
    assert superseded(cat) == set()
    cat.apply_journal([store(11, 60.0, 1, pos=1)], {})
    assert superseded(cat) == {8}  # 9 has a child now
    assert cat.get_blocks([key(11)])[key(11)].superseded is False
    cat.apply_journal([store(12, 70.0, 1, pos=1)], {})
    assert cat.get_blocks([key(11)])[key(11)].superseded is True
    assert cat.chain_counts() == {"blocks": 12, "with_parent": 11, "orphans": 0, "superseded": 2}
    # Each mark is counted when made: 2, 8 (by 9), 9 (by 8 stored again), 8 (by 11), 11 (by 12).
    assert counter("kvfs_catalog_chain_marks_total", mark="superseded") - marks_before == 5


def test_offsets_never_move_backwards_and_can_be_forgotten(cat: Catalog) -> None:
    cat.apply_journal([], {"a.jnl": 100, "b.jnl": 5})
    cat.apply_journal([], {"a.jnl": 50})  # a stale reader
    assert cat.journal_offsets() == {"a.jnl": 100, "b.jnl": 5}
    assert cat.forget_segments(["a.jnl", "zzz.jnl"]) == 1
    assert cat.journal_offsets() == {"b.jnl": 5}


def test_apply_journal_is_one_transaction(cat: Catalog) -> None:
    cat.apply_journal([JournalRecord(RecordKind.STORE, key(1), 1.0, size=1)], {"a.jnl": 10})
    bad = [
        JournalRecord(RecordKind.STORE, key(2), 2.0, size=1),
        JournalRecord(RecordKind.STORE, key(3), 2.0, size=None),  # type: ignore[arg-type]  # NOT NULL violation
    ]
    errors_before = counter("kvfs_catalog_errors_total", op="apply_journal")
    with pytest.raises(Exception, match="(?i)null"):
        cat.apply_journal(bad, {"a.jnl": 20})
    assert counter("kvfs_catalog_errors_total", op="apply_journal") - errors_before == 1
    assert {r.key for r in cat.iter_blocks()} == {key(1)}
    assert cat.journal_offsets() == {"a.jnl": 10}


# --- reads -------------------------------------------------------------------------------------------------


def test_usage(cat: Catalog) -> None:
    cat.ensure_namespace("empty_model_000000000000", model="empty/model")
    cat.upsert_blocks(BlockRow(key(i), 100, 1.0, 10.0 + i) for i in range(3))
    cat.upsert_blocks(BlockRow(key(i, ns=NS2, rank=i % 2), 7, 1.0, 50.0) for i in range(4))
    usage = cat.usage()
    assert (usage.total_files, usage.total_bytes) == (7, 328)
    by_ns = {u.namespace: u for u in usage.namespaces}
    assert (by_ns[NS].files, by_ns[NS].bytes, by_ns[NS].last_access_min, by_ns[NS].last_access_max) == (
        3,
        300,
        10.0,
        12.0,
    )
    assert (by_ns[NS2].files, by_ns[NS2].bytes, by_ns[NS2].model) == (4, 28, "other_model")
    empty = by_ns["empty_model_000000000000"]
    assert (empty.files, empty.bytes, empty.last_access_min, empty.model) == (0, 0, None, "empty/model")


def test_iter_blocks_orders(cat: Catalog) -> None:
    cat.upsert_blocks(
        [
            BlockRow(key(1), 10, 5.0, 30.0, chain_pos=0),
            BlockRow(key(2), 30, 4.0, 10.0, chain_pos=0),
            BlockRow(key(3), 20, 3.0, 10.0, chain_pos=5),  # same recency, deeper in the prefix: evicted first
            BlockRow(key(4, ns=NS2), 40, 2.0, 20.0),
        ]
    )
    assert [r.key for r in cat.iter_blocks()] == [key(3), key(2), key(4, ns=NS2), key(1)]
    assert [r.key for r in cat.iter_blocks(order="mru", limit=2)] == [key(1), key(4, ns=NS2)]
    assert [r.key for r in cat.iter_blocks(order="size")][0] == key(4, ns=NS2)
    assert [r.key for r in cat.iter_blocks(order="created")][0] == key(4, ns=NS2)
    assert [r.key for r in cat.iter_blocks(namespace=NS)] == [key(3), key(2), key(1)]
    assert list(cat.iter_blocks(namespace="unknown_000000000000")) == []
    with pytest.raises(CatalogError, match="unknown block order"):
        list(cat.iter_blocks(order="random"))  # type: ignore[arg-type]


def test_last_access_of_and_get_blocks(cat: Catalog) -> None:
    cat.upsert_blocks(BlockRow(key(i, rank=0), 1, 1.0, float(i)) for i in range(1200))  # > one IN chunk
    wanted = [key(i, rank=0) for i in range(0, 1200, 3)] + [key(5, rank=1), key(5, ns="never_000000000000")]
    got = cat.last_access_of(wanted)
    assert got == {key(i, rank=0): float(i) for i in range(0, 1200, 3)}
    rows = cat.get_blocks([key(7, rank=0)])
    assert rows[key(7, rank=0)].block_id is not None


def test_eviction_log(cat: Catalog) -> None:
    cat.log_eviction(10.0, NS, "capacity", 5, 500)
    cat.log_eviction(20.0, NS2, "ttl", 1, 100)
    log = cat.eviction_log()
    assert [(e.time, e.namespace, e.reason, e.files, e.bytes) for e in log] == [
        (20.0, NS2, "ttl", 1, 100),
        (10.0, NS, "capacity", 5, 500),
    ]
    assert len(cat.eviction_log(limit=1)) == 1


def test_no_engine_or_session_is_handed_out_and_policies_get_segment_bytes(cat: Catalog) -> None:
    # SQL stays in kvfs/catalog: the facade gives rows and figures, not database handles.
    assert not hasattr(cat, "engine") and not hasattr(cat, "session")
    cat.upsert_blocks(BlockRow(key(i), 10, 1.0, 1.0) for i in range(3))
    cat.upsert_blocks([BlockRow(key(9, ns=NS2), 5, 1.0, 1.0, hits=2)])
    assert cat.segment_bytes(None) == (35, 30)
    assert cat.segment_bytes([cat.namespace_id(NS2) or 0]) == (5, 0)
    assert cat.segment_bytes([]) == (0, 0)


# --- concurrency: real processes -----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from kvfs.catalog import BlockRow, Catalog
    from kvfs.journal import JournalRecord, RecordKind
    from kvfs.layout import BlockKey

    url, ns, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    catalog = Catalog.open(url)
    for batch in range(20):
        keys = [BlockKey(ns, worker, 0, f"{batch * 1000 + i:032x}", "kvfs") for i in range(200)]
        catalog.upsert_blocks(BlockRow(k, 1, 1.0, 1.0) for k in keys)
        catalog.apply_journal(
            [JournalRecord(RecordKind.ACCESS, k, 2.0) for k in keys], {f"w{worker}.jnl": batch + 1}
        )
        catalog.usage()
    print("ok")
    """
)


def test_concurrent_writer_processes(catalog_url: str) -> None:
    Catalog.open(catalog_url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, catalog_url, NS, str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for w in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    with Catalog.open(catalog_url) as catalog:
        assert catalog.block_count() == 3 * 20 * 200
        assert all(r.hits == 1 and r.last_access == 2.0 for r in catalog.iter_blocks())
        assert catalog.journal_offsets() == {f"w{w}.jnl": 20 for w in range(3)}


def test_concurrent_first_open(catalog_url: str) -> None:
    """Several processes creating the schema at once: it is created once, nobody fails."""
    script = "import sys; from kvfs.catalog import Catalog; Catalog.open(sys.argv[1]).close(); print('ok')"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, catalog_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION


def test_raw_sqlite_sees_the_same_rows(sqlite_url: str) -> None:
    """The SQLite catalog is a plain file other tools can read (no hidden state)."""
    with Catalog.open(sqlite_url) as catalog:
        catalog.upsert_blocks([BlockRow(key(1), 10, 1.0, 2.0)])
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    assert conn.execute("SELECT size, last_access, rank FROM blocks").fetchall() == [(10, 2.0, -1)]
    conn.close()


def test_sqlite_on_a_network_filesystem_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvfs.catalog import engine

    assert engine.filesystem_type(str(tmp_path)) not in engine.NETWORK_FILESYSTEMS
    monkeypatch.setattr(engine, "filesystem_type", lambda path: "lustre")
    with pytest.raises(CatalogError, match="on a lustre filesystem"):
        Catalog.open(str(tmp_path / "c.db"))


def test_filesystem_type_reads_mountinfo() -> None:
    from kvfs.catalog.engine import filesystem_type

    assert filesystem_type("/proc/self") == "proc"


def test_concurrent_namespace_creation(catalog_url: str) -> None:
    """Processes racing to create the same namespaces all get the same ids."""
    Catalog.open(catalog_url).close()
    script = textwrap.dedent(
        """
        import sys
        from kvfs.catalog import Catalog
        catalog = Catalog.open(sys.argv[1])
        print(" ".join(str(catalog.ensure_namespace(f"ns{i}_0123456789ab")) for i in range(30)))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, catalog_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        outputs.append(out.split())
    assert all(o == outputs[0] for o in outputs) and len(set(outputs[0])) == 30


def test_corrupt_sqlite_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"not a database at all " * 200)
    with pytest.raises(CatalogError, match="file is not a database") as info:
        Catalog.open(str(path))
    assert "\n" not in str(info.value)
    assert path.read_bytes().startswith(b"not a database")  # left as it was


def test_password_is_not_printed(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.open("postgresql://bob:hunter2@127.0.0.1:1/kvfs")
    assert "hunter2" not in str(info.value) and "bob:***@" in str(info.value)
