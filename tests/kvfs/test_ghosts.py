"""The one ghost store (schema v5) on SQLite and PostgreSQL: the upgrade from a v4 catalog that has 2q's and
prefix's own tables with rows, policies kept apart in one table, and the candidate streams' query plans."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from kvfs.catalog import SCHEMA_VERSION, BlockClass, BlockRow, Catalog, ghosts, testing
from kvfs.catalog.engine import parse_catalog_url
from kvfs.catalog.schema import UPGRADES
from kvfs.catalog.streams import candidate_query
from kvfs.layout import BlockKey
from kvfs.policy.prefix import adapt

NS = "org_model_0123456789ab"


def key(n: int) -> BlockKey:
    return BlockKey(NS, None, 0, f"{n:016x}{n:016x}", "kvfs")


# The side tables as 2q (kvfs/policy/history.py) and prefix (kvfs/catalog/prefix_ghosts.py) created them on
# first use before v5, with the rows a running evictor leaves.
V4_POLICY_TABLES = [
    "CREATE TABLE policy_block_history (namespace_id INTEGER NOT NULL, rank INTEGER NOT NULL, grp INTEGER NOT "
    "NULL, hash_prefix VARCHAR(16) NOT NULL, last_seen FLOAT NOT NULL, "
    "PRIMARY KEY (namespace_id, rank, grp, hash_prefix))",
    "CREATE INDEX ix_policy_block_history_last_seen ON policy_block_history (last_seen)",
    "CREATE TABLE policy_state (name VARCHAR(64) NOT NULL PRIMARY KEY, block_id INTEGER NOT NULL, "
    "access_time FLOAT NOT NULL)",
    "CREATE TABLE policy_prefix_ghosts (namespace_id INTEGER NOT NULL, rank INTEGER NOT NULL, grp INTEGER NOT "
    "NULL, hash_prefix VARCHAR(16) NOT NULL, last_seen FLOAT NOT NULL, reused BOOLEAN NOT NULL, "
    "PRIMARY KEY (namespace_id, rank, grp, hash_prefix))",
    "CREATE INDEX ix_policy_prefix_ghosts_last_seen ON policy_prefix_ghosts (last_seen)",
    "CREATE TABLE policy_prefix_state (name VARCHAR(64) NOT NULL PRIMARY KEY, block_id INTEGER NOT NULL, "
    "access_time FLOAT NOT NULL, beta FLOAT NOT NULL)",
    "INSERT INTO policy_block_history VALUES (1, -1, 0, '0000000000000007', 7.0)",
    "INSERT INTO policy_block_history VALUES (1, 0, 0, '0000000000000008', 8.0)",
    "INSERT INTO policy_state VALUES ('2q', 12, 30.0)",
    "INSERT INTO policy_prefix_ghosts VALUES (1, -1, 0, '0000000000000007', 6.0, TRUE)",
    "INSERT INTO policy_prefix_ghosts VALUES (1, -1, 0, '0000000000000009', 9.0, FALSE)",
    "INSERT INTO policy_prefix_state VALUES ('prefix', 11, 29.0, 0.125)",
]


def make_v4(catalog_url: str, *, policy_tables: bool) -> None:
    """A real v4 catalog: today's v1 DDL upgraded by the shipped steps 2-4, then the old side tables."""
    from test_catalog import V1_DDL  # the v1 catalog the upgrade tests start from (tests/kvfs on sys.path)

    engine = create_engine(parse_catalog_url(catalog_url))
    with engine.begin() as conn:
        serial = "INTEGER" if conn.dialect.name == "sqlite" else "SERIAL"
        for ddl in V1_DDL:
            conn.execute(text(ddl.replace("{serial}", serial)))
        for version in (2, 3, 4):
            UPGRADES[version](conn)
        conn.execute(text("UPDATE kvfs_meta SET value = '4' WHERE key = 'schema_version'"))
        if policy_tables:
            for statement in V4_POLICY_TABLES:
                conn.execute(text(statement))
    engine.dispose()


def test_upgrade_from_v4_moves_both_ghost_stores_into_one(catalog_url: str) -> None:
    make_v4(catalog_url, policy_tables=True)
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION == 9
        dump = testing.dump(catalog)
        assert not {
            "policy_block_history",
            "policy_state",
            "policy_prefix_ghosts",
            "policy_prefix_state",
        } & set(dump)
        rows = [
            (p, ns, r, g, h, last, bool(reused))
            for p, ns, r, g, h, last, reused, frequent in dump["policy_ghosts"]
            if not frequent
        ]
        assert sorted(rows) == [
            ("2q", 1, -1, 0, "0000000000000007", 7.0, False),
            ("2q", 1, 0, 0, "0000000000000008", 8.0, False),
            ("prefix", 1, -1, 0, "0000000000000007", 6.0, True),
            ("prefix", 1, -1, 0, "0000000000000009", 9.0, False),
        ]
        assert sorted(dump["policy_states"]) == [
            ("2q", 12, 30.0, 0.0, None),
            ("prefix", 11, 29.0, 0.125, None),
        ]
        # The moved state is the policies' state: prefix orders by its stored bonus, 2q counts per its ghosts.
        assert ghosts.bonus(catalog, policy="prefix", default_beta=0.0)[0] == 0.125
        assert ghosts.ghost_counts(catalog, "prefix") == {True: 1, False: 1}
        assert ghosts.ghost_counts(catalog, "2q") == {False: 2}
        # The v1 row survived every step.
        assert [r.last_access for r in catalog.iter_blocks()] == [7.0]


def test_upgrade_from_v4_without_policy_tables(catalog_url: str) -> None:
    make_v4(catalog_url, policy_tables=False)
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == 9
        assert testing.columns(catalog, "policy_ghosts") == {
            "policy",
            "namespace_id",
            "rank",
            "grp",
            "hash_prefix",
            "last_seen",
            "reused",
            "frequent",
        }
        assert testing.indexes(catalog, "policy_ghosts") >= {"ix_policy_ghosts_last_seen"}
        assert ghosts.ghost_counts(catalog, "prefix") == {}


def test_the_upgraded_schema_is_the_fresh_one(catalog_url: str, tmp_path) -> None:
    make_v4(catalog_url, policy_tables=True)
    with Catalog.open(catalog_url) as upgraded:
        old = {t: testing.columns(upgraded, t) for t in ("policy_ghosts", "policy_states")}
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with Catalog.open(fresh_url) as fresh:
        assert {t: testing.columns(fresh, t) for t in old} == old


def test_policies_keep_their_own_ghosts_in_the_one_store(catalog: Catalog) -> None:
    catalog.upsert_blocks([BlockRow(key(n), 100, 1.0, float(n)) for n in range(1, 4)])
    ghosts.settle(catalog, policy="prefix", adapt=adapt, initial_beta=0.0, horizon=10.0)
    ghosts.revive(catalog, policy="2q", horizon=10.0)
    assert ghosts.remember(catalog, "2q", [(key(1), 1.0, False)], keep_newest=True) == 1
    assert (
        ghosts.remember(catalog, "prefix", [(key(1), 1.0, True), (key(2), 2.0, False)], keep_newest=False)
        == 2
    )
    catalog.remove_blocks([key(1)])
    catalog.upsert_blocks([BlockRow(key(1), 100, 5.0, 5.0)])  # re-stored after both evictions
    # prefix spends its own ghost of block 1 (a reused one: the bonus rises); 2q's ghost of it stays ...
    settled = ghosts.settle(catalog, policy="prefix", adapt=adapt, initial_beta=0.0, horizon=10.0)
    assert (settled.returned_reused, settled.returned_fresh) == (1, 0) and settled.beta > 0
    assert ghosts.ghost_counts(catalog, "prefix") == {False: 1}
    assert ghosts.ghost_counts(catalog, "2q") == {False: 1}
    # ... and counts the same re-store for 2q: block 1's hits go 0 -> 1.
    assert ghosts.revive(catalog, policy="2q", horizon=10.0).revived == 1
    assert catalog.get_blocks([key(1)])[key(1)].hits == 1
    # Each policy's bonus and watermark are its own.
    assert ghosts.bonus(catalog, policy="2q", default_beta=0.0)[0] == 0.0
    assert ghosts.bonus(catalog, policy="prefix", default_beta=0.0)[0] == settled.beta
    assert ghosts.bonus(catalog, policy="none", default_beta=0.5) == (0.5, 3.0)  # last access 2..5


@pytest.mark.parametrize(
    ("block_class", "index"),
    [
        (BlockClass.ORPHAN, "ix_blocks_orphan_lru"),
        (BlockClass.SUPERSEDED, "ix_blocks_superseded_lru"),
        (BlockClass.FRESH, "ix_blocks_fresh_lru"),
        (BlockClass.REUSED, "ix_blocks_reused_lru"),
        (BlockClass.ALL, "ix_blocks_lru"),
    ],
)
def test_each_class_streams_from_its_lru_index(sqlite_url: str, block_class: BlockClass, index: str) -> None:
    # The partial indexes serve a query only when it repeats their WHERE text: a rewritten condition
    # (`orphan = true`, a bound `hits = ?`) would fall back to walking all blocks for a rare class.
    with Catalog.open(sqlite_url) as catalog:
        catalog.upsert_blocks([BlockRow(key(n), 100, 1.0, float(n), hits=n % 2) for n in range(1, 50)])
        plan = testing.query_plan(catalog, candidate_query(None, 1e9, block_class))
    assert f"USING INDEX {index} " in plan, plan
