"""Schema versions: a fresh database gets the latest models; an older one gets the upgrade steps in order.

`kvfs_meta.schema_version` records the version.  Each step moves a database from version N-1 to N with plain
DDL valid on SQLite and PostgreSQL (never by importing today's models, which describe only the latest version).
Creating and upgrading run in one write transaction under a lock, so concurrent openers do it once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text

from kvfs.catalog.errors import CatalogError
from kvfs.catalog.models import Base

SCHEMA_VERSION = 9
_VERSION_KEY = "schema_version"
# Arbitrary constant key for pg_advisory_xact_lock: serialises schema creation between processes.
_PG_SCHEMA_LOCK = 0x6B766673


def _v2_scan_generation_and_leases(conn: Connection) -> None:
    """v2: `blocks.seen` (scan generation, so a scan can drop rows of vanished files) and evictor leases."""
    conn.execute(text("ALTER TABLE blocks ADD COLUMN seen FLOAT NOT NULL DEFAULT 0"))
    conn.execute(
        text(
            "CREATE TABLE leases (name VARCHAR(128) NOT NULL PRIMARY KEY, "
            "holder VARCHAR(255) NOT NULL, expires_at FLOAT NOT NULL)"
        )
    )


def _v3_prefix_chains(conn: Connection) -> None:
    """v3: `blocks.parent_hash` and `blocks.orphan` (prefix chains), and the partial LRU indexes per class."""
    conn.execute(text("ALTER TABLE blocks ADD COLUMN parent_hash VARCHAR(128)"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN orphan BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(
        text(
            "CREATE INDEX ix_blocks_parent ON blocks (namespace_id, parent_hash) WHERE parent_hash IS NOT NULL"
        )
    )
    # The v3 set, spelled out: later versions add their own.
    for name, where in (
        ("ix_blocks_fresh_lru", "hits = 0"),
        ("ix_blocks_reused_lru", "hits > 0"),
        ("ix_blocks_orphan_lru", "orphan"),
    ):
        conn.execute(text(f"CREATE INDEX {name} ON blocks (last_access) WHERE {where}"))


def _v4_superseded_leaves(conn: Connection) -> None:
    """v4: `blocks.superseded` (never-read leaves whose parent got a newer child) and its partial LRU index."""
    conn.execute(text("ALTER TABLE blocks ADD COLUMN superseded BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(text("CREATE INDEX ix_blocks_superseded_lru ON blocks (last_access) WHERE superseded"))


# Before v5, 2q and prefix each created their own pair of tables on first use: (ghosts, state) -> policy name
# their ghost rows belong to (the state tables carry it per row).
_V4_POLICY_TABLES = (
    ("policy_block_history", "policy_state", "'2q'", "FALSE", "0.0"),
    ("policy_prefix_ghosts", "policy_prefix_state", "'prefix'", "reused", "beta"),
)


def _v5_policy_ghosts(conn: Connection) -> None:
    """v5: one ghost store for every policy (`policy_ghosts`, `policy_states`) in the versioned schema; the
    rows of 2q's and prefix's own tables (created on first use before v5) move over, and those tables go."""
    conn.execute(
        text(
            "CREATE TABLE policy_ghosts (policy VARCHAR(64) NOT NULL, namespace_id INTEGER NOT NULL, "
            "rank INTEGER NOT NULL, grp INTEGER NOT NULL, hash_prefix VARCHAR(16) NOT NULL, "
            "last_seen FLOAT NOT NULL, reused BOOLEAN NOT NULL, "
            "PRIMARY KEY (policy, namespace_id, rank, grp, hash_prefix))"
        )
    )
    conn.execute(text("CREATE INDEX ix_policy_ghosts_last_seen ON policy_ghosts (policy, last_seen)"))
    conn.execute(
        text(
            "CREATE TABLE policy_states (policy VARCHAR(64) NOT NULL PRIMARY KEY, block_id BIGINT NOT NULL, "
            "access_time FLOAT NOT NULL, beta FLOAT NOT NULL)"
        )
    )
    tables = set(inspect(conn).get_table_names())
    for ghosts, state, policy, reused, beta in _V4_POLICY_TABLES:
        if ghosts in tables:
            conn.execute(
                text(
                    "INSERT INTO policy_ghosts (policy, namespace_id, rank, grp, hash_prefix, last_seen, reused) "
                    f"SELECT {policy}, namespace_id, rank, grp, hash_prefix, last_seen, {reused} FROM {ghosts}"
                )
            )
            conn.execute(text(f"DROP TABLE {ghosts}"))
        if state in tables:
            conn.execute(
                text(
                    "INSERT INTO policy_states (policy, block_id, access_time, beta) "
                    f"SELECT name, block_id, access_time, {beta} FROM {state} WHERE TRUE ON CONFLICT (policy) DO NOTHING"
                )
            )
            conn.execute(text(f"DROP TABLE {state}"))


def _v6_no_namespace_limits(conn: Connection) -> None:
    """v6: `namespaces.quota_bytes` and `namespaces.retired` go: quotas and retired namespaces are settings, read
    by the evictor and `kvfs gc` alike (kvfs.eviction.limits); nothing ever set these columns."""
    conn.execute(text("ALTER TABLE namespaces DROP COLUMN quota_bytes"))
    conn.execute(text("ALTER TABLE namespaces DROP COLUMN retired"))


def _v7_has_child(conn: Connection) -> None:
    """v7: `blocks.has_child` (backfilled with one set-based UPDATE) and the partial index of the blocks the
    superseded rule could mark (`ix_blocks_branch`): a branching store reads only the siblings it marks, not every
    sibling; `blocks.old_parent` (a re-stored block's previous parent, until its flag is settled)."""
    conn.execute(text("ALTER TABLE blocks ADD COLUMN has_child BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN old_parent VARCHAR(128)"))
    conn.execute(text("CREATE INDEX ix_blocks_old_parent ON blocks (id) WHERE old_parent IS NOT NULL"))
    conn.execute(
        text(
            "UPDATE blocks SET has_child = TRUE WHERE EXISTS (SELECT 1 FROM blocks c "
            "WHERE c.namespace_id = blocks.namespace_id AND c.parent_hash = blocks.block_hash "
            "AND c.rank = blocks.rank AND c.grp = blocks.grp)"
        )
    )
    conn.execute(
        text(
            "CREATE INDEX ix_blocks_branch ON blocks (namespace_id, parent_hash, rank, grp) WHERE "
            "parent_hash IS NOT NULL AND hits = 0 AND NOT orphan AND NOT superseded AND NOT has_child"
        )
    )


def _v8_s3fifo(conn: Connection) -> None:
    """v8: S3-FIFO's per-block state (`fifo_queue`, `fifo_seq`, `fifo_freq`), its two queue indexes and the FIFO
    ghost table.  Existing rows take their places in LRU order (the oldest access first), as S3-FIFO would have
    left them: rows never read in the small queue, rows read in main (their first read promoted them) with the
    later reads on their counter, `min(3, hits - 1)`; no ghosts.  (All in small would make the first passes sweep
    every read row of the tier to main before main lost one.)"""
    conn.execute(text("ALTER TABLE blocks ADD COLUMN fifo_queue INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN fifo_seq BIGINT NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN fifo_freq INTEGER NOT NULL DEFAULT 0"))
    # Positions by rank of (last access, deeper chain position first, id): one window pass.
    conn.execute(
        text(
            "UPDATE blocks SET fifo_queue = CASE WHEN hits > 0 THEN 1 ELSE 0 END, "
            "fifo_freq = CASE WHEN hits > 4 THEN 3 WHEN hits > 0 THEN hits - 1 ELSE 0 END, fifo_seq = r.pos "
            "FROM (SELECT id AS rid, row_number() OVER (ORDER BY last_access, chain_pos DESC, id) AS pos "
            "FROM blocks) r WHERE blocks.id = r.rid"
        )
    )
    conn.execute(
        text(
            "CREATE INDEX ix_blocks_fifo_small ON blocks (fifo_seq, id, size, fifo_queue) WHERE fifo_queue = 0"
        )
    )
    conn.execute(
        text(
            "CREATE INDEX ix_blocks_fifo_main ON blocks (fifo_seq, id, size, fifo_queue) WHERE fifo_queue = 1"
        )
    )
    conn.execute(
        text(
            "CREATE TABLE fifo_ghosts (namespace_id INTEGER NOT NULL, rank INTEGER NOT NULL, grp INTEGER NOT NULL, "
            "hash_prefix VARCHAR(16) NOT NULL, seq BIGINT NOT NULL, "
            "PRIMARY KEY (namespace_id, rank, grp, hash_prefix))"
        )
    )
    conn.execute(text("CREATE INDEX ix_fifo_ghosts_seq ON fifo_ghosts (seq)"))


def _v9_adaptive(conn: Connection) -> None:
    """v9: `adaptive`'s state (kvfs.policy.adaptive): a ghost's class has three values (`policy_ghosts.frequent`:
    read twice or more when it went; FALSE for the ghosts of every other policy), and a policy's state beyond
    `beta` (`policy_states.extra`, JSON: the two shares, the chooser's scores and order); the REUSED, orphan
    and superseded LRU indexes also hold `size`, `hits`, `orphan` and `superseded`."""
    conn.execute(text("ALTER TABLE policy_ghosts ADD COLUMN frequent BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(text("ALTER TABLE policy_states ADD COLUMN extra TEXT"))
    # The REUSED, orphan and superseded LRU indexes cover their class's bytes (`adaptive` sums them each pass);
    # spelled out, as the v3 set.
    for name, where in (
        ("ix_blocks_reused_lru", "hits > 0"),
        ("ix_blocks_orphan_lru", "orphan"),
        ("ix_blocks_superseded_lru", "superseded"),
    ):
        conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(
            text(f"CREATE INDEX {name} ON blocks (last_access, size, hits, orphan, superseded) WHERE {where}")
        )


# UPGRADES[v] upgrades a database at version v-1 to version v.
UPGRADES: dict[int, Callable[[Connection], None]] = {
    2: _v2_scan_generation_and_leases,
    3: _v3_prefix_chains,
    4: _v4_superseded_leaves,
    5: _v5_policy_ghosts,
    6: _v6_no_namespace_limits,
    7: _v7_has_child,
    8: _v8_s3fifo,
    9: _v9_adaptive,
}


def read_schema_version(conn: Connection) -> int | None:
    """The recorded version, or None for an empty database."""
    tables = set(inspect(conn).get_table_names())
    if "kvfs_meta" not in tables:
        if tables & {"blocks", "namespaces"}:
            raise CatalogError("database has kvfs-like tables but no kvfs_meta: not a kvfs catalog")
        if tables:
            raise CatalogError(
                f"database is not empty and not a kvfs catalog (tables: {', '.join(sorted(tables))})"
            )
        return None
    row = conn.execute(text("SELECT value FROM kvfs_meta WHERE key = :k"), {"k": _VERSION_KEY}).first()
    if row is None:
        raise CatalogError("kvfs_meta has no schema_version: damaged catalog")
    try:
        return int(row[0])
    except ValueError as exc:
        raise CatalogError(f"kvfs_meta.schema_version is not a number: {row[0]!r}") from exc


def ensure_schema(conn: Connection) -> int:
    """Create or upgrade the schema inside the caller's write transaction; return the version found before."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
    found = read_schema_version(conn)
    if found is None:
        Base.metadata.create_all(conn)
        conn.execute(
            text("INSERT INTO kvfs_meta (key, value) VALUES (:k, :v)"),
            {"k": _VERSION_KEY, "v": str(SCHEMA_VERSION)},
        )
        return 0
    if found > SCHEMA_VERSION:
        raise CatalogError(
            f"catalog schema version {found} is newer than this kvfs understands ({SCHEMA_VERSION}): upgrade kvfs"
        )
    if found < 1:
        raise CatalogError(f"catalog schema version {found} is invalid")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        UPGRADES[version](conn)
        conn.execute(
            text("UPDATE kvfs_meta SET value = :v WHERE key = :k"), {"k": _VERSION_KEY, "v": str(version)}
        )
    return found
