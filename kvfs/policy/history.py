"""Block history that outlives eviction ("ghosts"), kept in the catalog for the `2q` policy.

A block evicted and then stored again was wanted again: it should not restart on probation as if it were new.
The catalog forgets a block when its row is removed, so this module keeps a small history table beside it:
one row per block key seen recently (namespace, rank, group and the first 64 bits of the block hash: block
hashes are cryptographic, and a rare collision only gives one block an undeserved second chance), with the
creation time of its latest incarnation and its last access seen.  `sync()` runs at the start of every policy pass, in one write transaction:

1. rows new or used since the last sync (ids above the saved watermark, or last access at or after the saved
   one) whose key is in the history with an older creation time are re-stores of evicted blocks (a later
   incarnation of the same key): their `hits` goes from 0 to 1 (a re-store counts as a use);
2. new rows and rows accessed since the last sync are copied into the history (latest access wins);
3. history older than `HORIZON` times the tier's current recency span (newest minus oldest `last_access` in
   the catalog) is dropped, so the table stays a few times the size of the tier's turnover;
4. the watermarks (max block id, max last access) are saved.

Everything lives in the catalog (tables `policy_block_history`, `policy_state`), so it survives evictor
restarts and fail-over, and `kvfs gc` and the evictor share it.  The tables are created on first use;
they are the policy's own bookkeeping, outside the catalog's schema versions.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Engine, Float, Index, Integer, MetaData, String, Table, text

from kvfs.catalog import Catalog

# History is kept for this many times the tier's recency span (see docs/policy.md: 2-8 measure the same).
HORIZON = 3.0
HASH_PREFIX = 16

metadata = MetaData()

block_history = Table(
    "policy_block_history",
    metadata,
    Column("namespace_id", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("grp", Integer, primary_key=True),
    Column("hash_prefix", String(HASH_PREFIX), primary_key=True),
    Column("created", Float, nullable=False),  # creation time of the latest incarnation seen
    Column("last_seen", Float, nullable=False),
    Index("ix_policy_block_history_last_seen", "last_seen"),
)

policy_state = Table(
    "policy_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("block_id", Integer, nullable=False),
    Column("access_time", Float, nullable=False),
)

_ready: weakref.WeakSet[Engine] = weakref.WeakSet()
_ready_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class SyncStats:
    revived: int
    history_rows_written: int
    history_rows_dropped: int


def ensure_tables(catalog: Catalog) -> None:
    """Create the history tables if this catalog has none yet (idempotent, once per engine)."""
    engine = catalog.engine
    with _ready_lock:
        if engine in _ready:
            return
        with engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
        _ready.add(engine)


def _statements(dialect: str) -> dict[str, str]:
    greatest = "max" if dialect == "sqlite" else "GREATEST"
    prefix = f"substr(b.block_hash, 1, {HASH_PREFIX})"
    return {
        "revive": (
            "UPDATE blocks SET hits = hits + 1 WHERE hits = 0 "
            "AND ((id > :lo AND id <= :hi) OR last_access > :since) AND EXISTS ("
            "SELECT 1 FROM policy_block_history h WHERE h.namespace_id = blocks.namespace_id "
            "AND h.rank = blocks.rank AND h.grp = blocks.grp "
            f"AND h.hash_prefix = substr(blocks.block_hash, 1, {HASH_PREFIX}) AND h.created < blocks.created)"
        ),
        # Two index range scans (new ids; recent accesses), merged: an OR would scan the whole table.
        "record": (
            "INSERT INTO policy_block_history (namespace_id, rank, grp, hash_prefix, created, last_seen) "
            "SELECT namespace_id, rank, grp, hp, max(created), max(last_access) FROM ("
            f"SELECT b.namespace_id, b.rank, b.grp, {prefix} AS hp, b.created, b.last_access FROM blocks b "
            "WHERE b.id > :lo AND b.id <= :hi UNION ALL "
            f"SELECT b.namespace_id, b.rank, b.grp, {prefix} AS hp, b.created, b.last_access FROM blocks b "
            "WHERE b.last_access > :since) changed "
            "WHERE true GROUP BY namespace_id, rank, grp, hp "
            "ON CONFLICT (namespace_id, rank, grp, hash_prefix) DO UPDATE SET "
            f"created = {greatest}(policy_block_history.created, excluded.created), "
            f"last_seen = {greatest}(policy_block_history.last_seen, excluded.last_seen)"
        ),
        "prune": "DELETE FROM policy_block_history WHERE last_seen < :cutoff",
        "state": "SELECT block_id, access_time FROM policy_state WHERE name = :name",
        "save": (
            "INSERT INTO policy_state (name, block_id, access_time) VALUES (:name, :block_id, :access_time) "
            "ON CONFLICT (name) DO UPDATE SET block_id = excluded.block_id, access_time = excluded.access_time"
        ),
        # Three scalar subqueries: each is one index lookup (together in one SELECT they would scan).
        "span": (
            "SELECT (SELECT max(id) FROM blocks), (SELECT min(last_access) FROM blocks), "
            "(SELECT max(last_access) FROM blocks)"
        ),
    }


def sync(catalog: Catalog, *, name: str = "2q", horizon: float = HORIZON) -> SyncStats:
    """Bring the history up to date with the catalog; mark re-stored blocks as used.  One transaction."""
    ensure_tables(catalog)
    sql = _statements(catalog.dialect)
    with catalog.engine.connect() as conn:
        # The catalog engine's write mode (SQLite: BEGIN IMMEDIATE): waits for the lock instead of failing
        # on the upgrade from read to write, and never interleaves with a journal apply.
        conn.execution_options(kvfs_write=True)
        with conn.begin():
            return _sync(conn, sql, name, horizon)


def _sync(conn: Connection, sql: dict[str, str], name: str, horizon: float) -> SyncStats:
    max_id, oldest, newest = conn.execute(text(sql["span"])).one()
    if max_id is None:
        return SyncStats(0, 0, 0)
    row = conn.execute(text(sql["state"]), {"name": name}).first()
    # First sync: every row is new (by id); no access-time window is needed.
    lo, since = (int(row[0]), float(row[1])) if row else (0, float("inf"))
    hi = int(max_id)
    revived = conn.execute(text(sql["revive"]), {"lo": lo, "hi": hi, "since": since}).rowcount
    written = conn.execute(text(sql["record"]), {"lo": lo, "hi": hi, "since": since}).rowcount
    cutoff = float(newest) - horizon * (float(newest) - float(oldest))
    dropped = conn.execute(text(sql["prune"]), {"cutoff": cutoff}).rowcount
    conn.execute(text(sql["save"]), {"name": name, "block_id": max(hi, lo), "access_time": float(newest)})
    return SyncStats(max(revived, 0), max(written, 0), max(dropped, 0))


def history_size(catalog: Catalog) -> int:
    ensure_tables(catalog)
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM policy_block_history")).scalar_one())
