"""The `prefix` policy's state in the catalog: ghosts of evicted blocks with their class, and the bonus.

The policy (`kvfs.policy.prefix`) decides; this module only stores and counts, so its SQL stays in the catalog
package.  Two tables, created on first use (the policy's own bookkeeping, outside the schema versions, as
2q's ghosts are):

* `policy_prefix_ghosts`: one row per block evicted for capacity or quota (namespace, rank, group, first 64
  bits of the hash), with its last access and whether it had been reused (`hits > 0`) when it went.
* `policy_prefix_state`: per policy name, the id/time watermark of rows already checked for re-stores and the
  current bonus `beta`.

`settle()` runs once before a pass, in one transaction: it counts the new rows whose key has an older ghost
(re-stores, by the ghost's class) and drops those ghosts, lets the policy's rule turn the counts into the new
bonus, drops ghosts older than `horizon` recency spans, and saves the bonus and watermark.  So the bonus
survives restarts and fail-over, and `kvfs gc` and the evictor continue the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)

from kvfs.catalog.catalog import Catalog
from kvfs.catalog.engine import create_tables_once
from kvfs.catalog.models import NO_RANK
from kvfs.layout import BlockKey

HASH_PREFIX = 16
_CHUNK = 5000

metadata = MetaData()

ghosts = Table(
    "policy_prefix_ghosts",
    metadata,
    Column("namespace_id", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("grp", Integer, primary_key=True),
    Column("hash_prefix", String(HASH_PREFIX), primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("reused", Boolean, nullable=False),
    Index("ix_policy_prefix_ghosts_last_seen", "last_seen"),
)

state = Table(
    "policy_prefix_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("block_id", Integer, nullable=False),
    Column("access_time", Float, nullable=False),
    Column("beta", Float, nullable=False),
)

# (re-stores of fresh ghosts, of reused ghosts, fresh ghosts left, reused ghosts left, old bonus) -> new bonus
AdaptFn = Callable[[int, int, int, int, float], float]


@dataclass(frozen=True, slots=True)
class Settled:
    beta: float
    span: float  # newest minus oldest last access in the catalog
    returned_fresh: int
    returned_reused: int
    ghosts_dropped: int


def ensure_tables(catalog: Catalog) -> None:
    create_tables_once(catalog.engine, metadata)


# Rows new since the last settle (ids above the watermark, or created since its time: SQLite reuses the ids of
# deleted rows at the top of the table) that have an older ghost: re-stores.  CROSS JOIN keeps SQLite driving
# from the new rows and probing the ghosts' primary key (PostgreSQL plans it as any join).
_RETURNED = (
    "SELECT g.namespace_id, g.rank, g.grp, g.hash_prefix, g.reused FROM blocks b CROSS JOIN "
    "policy_prefix_ghosts g WHERE ((b.id > :lo AND b.id <= :hi) OR (b.last_access >= :since AND "
    "b.created >= :since)) AND g.namespace_id = b.namespace_id AND g.rank = b.rank AND g.grp = b.grp "
    f"AND g.hash_prefix = substr(b.block_hash, 1, {HASH_PREFIX}) AND g.last_seen < b.created"
)
_COUNT = "SELECT reused, count(*) FROM policy_prefix_ghosts GROUP BY reused"
_PRUNE = "DELETE FROM policy_prefix_ghosts WHERE last_seen < :cutoff"
# Three scalar subqueries: each one index lookup.
_SPAN = (
    "SELECT (SELECT max(id) FROM blocks), (SELECT min(last_access) FROM blocks), "
    "(SELECT max(last_access) FROM blocks)"
)
_STATE = "SELECT block_id, access_time, beta FROM policy_prefix_state WHERE name = :name"
_SAVE = (
    "INSERT INTO policy_prefix_state (name, block_id, access_time, beta) VALUES (:name, :block_id, :t, :beta) "
    "ON CONFLICT (name) DO UPDATE SET block_id = excluded.block_id, access_time = excluded.access_time, "
    "beta = excluded.beta"
)


def _write(catalog: Catalog) -> Connection:
    conn = catalog.engine.connect()
    # The catalog's write mode (SQLite: BEGIN IMMEDIATE), so this never interleaves with a journal apply.
    conn.execution_options(kvfs_write=True)
    return conn


def load_beta(catalog: Catalog, name: str, default: float) -> float:
    ensure_tables(catalog)
    with catalog.engine.connect() as conn:
        row = conn.execute(text(_STATE), {"name": name}).first()
    return default if row is None else float(row[2])


def settle(catalog: Catalog, *, name: str, adapt: AdaptFn, initial_beta: float, horizon: float) -> Settled:
    """Count re-stores since the last call, adapt and save the bonus, drop old ghosts.  One transaction."""
    ensure_tables(catalog)
    with _write(catalog) as conn, conn.begin():
        max_id, oldest, newest = conn.execute(text(_SPAN)).one()
        row = conn.execute(text(_STATE), {"name": name}).first()
        beta = initial_beta if row is None else float(row[2])
        if max_id is None:
            return Settled(beta, 0.0, 0, 0, 0)
        span = float(newest) - float(oldest)
        fresh = reused = 0
        if row is not None:  # the first call has no ghosts yet: nothing can be a re-store
            params = {"lo": int(row[0]), "hi": int(max_id), "since": float(row[1])}
            found = {tuple(r[:4]): bool(r[4]) for r in conn.execute(text(_RETURNED), params)}
            reused = sum(found.values())
            fresh = len(found) - reused
            if found:
                p = "?" if catalog.dialect == "sqlite" else "%s"
                conn.exec_driver_sql(
                    "DELETE FROM policy_prefix_ghosts WHERE namespace_id = "
                    f"{p} AND rank = {p} AND grp = {p} AND hash_prefix = {p}",
                    list(found),
                )
        left = {bool(r): int(c) for r, c in conn.execute(text(_COUNT))}
        beta = adapt(fresh, reused, left.get(False, 0), left.get(True, 0), beta)
        dropped = conn.execute(text(_PRUNE), {"cutoff": float(newest) - horizon * span}).rowcount
        lo = int(row[0]) if row is not None else 0
        conn.execute(
            text(_SAVE), {"name": name, "block_id": max(int(max_id), lo), "t": float(newest), "beta": beta}
        )
    return Settled(beta, span, fresh, reused, max(dropped, 0))


def remember(catalog: Catalog, evicted: Iterable[tuple[BlockKey, float, bool]]) -> int:
    """Record evicted blocks (key, last access, was reused) as ghosts; returns how many rows."""
    ensure_tables(catalog)
    ns_ids = {ns.name: ns.id for ns in catalog.namespaces()}
    rows: dict[tuple[int, int, int, str], tuple[float, bool]] = {}
    for key, last_access, was_reused in evicted:
        ns_id = ns_ids.get(key.namespace)
        if ns_id is None:
            continue
        ident = (ns_id, NO_RANK if key.rank is None else key.rank, key.group, key.block_hash[:HASH_PREFIX])
        rows[ident] = (last_access, was_reused)
    if not rows:
        return 0
    p = "?" if catalog.dialect == "sqlite" else "%s"
    statement = (
        "INSERT INTO policy_prefix_ghosts (namespace_id, rank, grp, hash_prefix, last_seen, reused) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (namespace_id, rank, grp, hash_prefix) DO UPDATE "
        "SET last_seen = excluded.last_seen, reused = excluded.reused"
    )
    # Key order: near-sequential B-tree inserts, as for the catalog's upserts.
    params = sorted((*ident, last, reused) for ident, (last, reused) in rows.items())
    with _write(catalog) as conn, conn.begin():
        for start in range(0, len(params), _CHUNK):
            conn.exec_driver_sql(statement, params[start : start + _CHUNK])
    return len(params)


def ghost_count(catalog: Catalog) -> dict[bool, int]:
    ensure_tables(catalog)
    with catalog.engine.connect() as conn:
        return {bool(r): int(c) for r, c in conn.execute(text(_COUNT))}
