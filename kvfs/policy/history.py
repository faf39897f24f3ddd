"""Ghosts: keys of recently evicted blocks, kept in the catalog for the `2q` policy.

A block evicted and then stored again was wanted again: it should not restart on probation as if it were new.
The catalog forgets a block when its row is removed, so this module keeps a small table beside it, one row per
block key evicted for capacity or quota (namespace, rank, group and the first 64 bits of the block hash:
block hashes are cryptographic, and a rare collision only gives one block an undeserved second chance), with
the block's last access when it was evicted.

* `remember(catalog, blocks)`: after a delete batch, its capacity/quota victims become ghosts (called through
  `TwoQueuePolicy.evicted` by `kvfs.eviction.execute_plan`).  Only a row *created after* the ghost's last access
  counts as a re-store.
* `revive(catalog)`: before a pass, rows new since the last pass (ids above the saved watermark, or created at
  or after the newest access the last pass saw) whose key has an older ghost are re-stores of evicted blocks:
  their `hits` goes from 0 to 1 (a re-store is a use).
  Ghosts last seen more than `HORIZON` times the tier's current recency span ago (newest minus oldest
  `last_access`) are dropped, so the table stays a few times the size of what the tier evicts per turnover.

Everything lives in the catalog (tables `policy_block_history`, `policy_state`), so it survives evictor
restarts and fail-over, and `kvfs gc` and the evictor share it.  The tables are created on first use; they
are the policy's own bookkeeping, outside the catalog's schema versions.  Cost per pass: index range scans
over the new rows and the dropped ghosts, plus one upsert per block offered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, String, Table, text

from kvfs.catalog import Catalog
from kvfs.catalog.engine import create_tables_once
from kvfs.catalog.models import NO_RANK
from kvfs.policy.base import EvictedBlock

# Ghosts are kept for this many times the tier's recency span (docs/policy.md: 2 to 8 measure the same).
HORIZON = 3.0
HASH_PREFIX = 16
_CHUNK = 5000

metadata = MetaData()

block_history = Table(
    "policy_block_history",
    metadata,
    Column("namespace_id", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("grp", Integer, primary_key=True),
    Column("hash_prefix", String(HASH_PREFIX), primary_key=True),
    Column("last_seen", Float, nullable=False),  # the block's last access when it was offered for eviction
    Index("ix_policy_block_history_last_seen", "last_seen"),
)

policy_state = Table(
    "policy_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("block_id", Integer, nullable=False),  # highest block id already checked for re-stores
    Column("access_time", Float, nullable=False),  # newest last_access at that check
)


@dataclass(frozen=True, slots=True)
class ReviveStats:
    revived: int
    ghosts_dropped: int


def ensure_tables(catalog: Catalog) -> None:
    """Create the ghost tables if this catalog has none yet (idempotent, once per engine)."""
    create_tables_once(catalog.engine, metadata)


class _Sql:
    def __init__(self, dialect: str) -> None:
        greatest = "max" if dialect == "sqlite" else "GREATEST"
        p = "?" if dialect == "sqlite" else "%s"
        self.revive = (
            "UPDATE blocks SET hits = hits + 1 WHERE hits = 0 "
            "AND ((id > :lo AND id <= :hi) OR (last_access >= :since AND created >= :since)) AND EXISTS ("
            "SELECT 1 FROM policy_block_history h WHERE h.namespace_id = blocks.namespace_id "
            "AND h.rank = blocks.rank AND h.grp = blocks.grp "
            f"AND h.hash_prefix = substr(blocks.block_hash, 1, {HASH_PREFIX}) AND h.last_seen < blocks.created)"
        )
        self.prune = "DELETE FROM policy_block_history WHERE last_seen < :cutoff"
        self.state = "SELECT block_id, access_time FROM policy_state WHERE name = :name"
        self.save = (
            "INSERT INTO policy_state (name, block_id, access_time) VALUES (:name, :block_id, :access_time) "
            "ON CONFLICT (name) DO UPDATE SET block_id = excluded.block_id, access_time = excluded.access_time"
        )
        # Three scalar subqueries: each is one index lookup (together in one SELECT they would scan).
        self.span = (
            "SELECT (SELECT max(id) FROM blocks), (SELECT min(last_access) FROM blocks), "
            "(SELECT max(last_access) FROM blocks)"
        )
        self.remember = (
            "INSERT INTO policy_block_history (namespace_id, rank, grp, hash_prefix, last_seen) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (namespace_id, rank, grp, hash_prefix) DO UPDATE SET "
            f"last_seen = {greatest}(policy_block_history.last_seen, excluded.last_seen)"
        )


def _write(catalog: Catalog) -> Connection:
    conn = catalog.engine.connect()
    # The catalog engine's write mode (SQLite: BEGIN IMMEDIATE): waits for the lock instead of failing on the
    # upgrade from read to write, and never interleaves with a journal apply.
    conn.execution_options(kvfs_write=True)
    return conn


def revive(catalog: Catalog, *, name: str = "2q", horizon: float = HORIZON) -> ReviveStats:
    """Count re-stores of evicted blocks as uses; drop old ghosts.  One transaction."""
    ensure_tables(catalog)
    sql = _Sql(catalog.dialect)
    with _write(catalog) as conn, conn.begin():
        max_id, oldest, newest = conn.execute(text(sql.span)).one()
        if max_id is None:
            return ReviveStats(0, 0)
        row = conn.execute(text(sql.state), {"name": name}).first()
        lo, hi = (int(row[0]) if row else 0), int(max_id)
        # New rows are those above the id watermark, and those created since the last check: SQLite reuses the
        # ids of deleted rows at the top of the table, so the id watermark alone would miss some.
        revived = 0
        if row is not None:  # on the first check there are no ghosts yet: nothing can be a re-store
            params = {"lo": lo, "hi": hi, "since": float(row[1])}
            revived = conn.execute(text(sql.revive), params).rowcount
        cutoff = float(newest) - horizon * (float(newest) - float(oldest))
        dropped = conn.execute(text(sql.prune), {"cutoff": cutoff}).rowcount
        conn.execute(text(sql.save), {"name": name, "block_id": max(hi, lo), "access_time": float(newest)})
    return ReviveStats(max(revived, 0), max(dropped, 0))


def remember(catalog: Catalog, candidates: Iterable[EvictedBlock]) -> int:
    """Record evicted blocks as ghosts; returns how many."""
    ensure_tables(catalog)
    ns_ids = {ns.name: ns.id for ns in catalog.namespaces()}
    params: dict[tuple[int, int, int, str], float] = {}
    for cand in candidates:
        k = cand.key
        ns_id = ns_ids.get(k.namespace)
        if ns_id is None:
            continue
        ident = (ns_id, NO_RANK if k.rank is None else k.rank, k.group, k.block_hash[:HASH_PREFIX])
        params[ident] = max(params.get(ident, cand.last_access), cand.last_access)
    if not params:
        return 0
    # Key order turns random B-tree inserts into near-sequential ones, as for the catalog's upserts.
    rows = sorted((*ident, last) for ident, last in params.items())
    statement = _Sql(catalog.dialect).remember
    with _write(catalog) as conn, conn.begin():
        for start in range(0, len(rows), _CHUNK):
            conn.exec_driver_sql(statement, rows[start : start + _CHUNK])
    return len(rows)


def history_size(catalog: Catalog) -> int:
    ensure_tables(catalog)
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM policy_block_history")).scalar_one())
