"""Ghosts: keys of recently evicted blocks, and each policy's watermark and bonus, in the catalog (schema v5).

A block evicted and then stored again was wanted again.  The catalog forgets a block when its row goes, so the
policies that learn from re-stores (`2q`, `prefix`) keep its key here: one `policy_ghosts` row per policy and
block key (namespace, rank, group and the first 64 bits of the block hash: block hashes are cryptographic, and
a rare collision only gives one block an undeserved second chance), with its last access when it was evicted
and whether it had been reused (`hits > 0`).  `policy_states` keeps, per policy, the id/time watermark of
rows already checked for re-stores and prefix's bonus `beta`.  The policies decide; this module only stores
and counts, so their SQL stays in the catalog package, and restarts, fail-over and `kvfs gc` continue the same
state.

Writes happen only in an eviction pass (`EvictionPolicy.prepare` before planning, `evicted` after deleting):
* `remember()`: a delete batch's capacity/quota victims become ghosts.  Only a row *created after* the ghost's
  last access counts as its re-store.
* `revive()` (2q): rows new since the last check whose key has an older ghost get `hits` 0 -> 1 (a re-store is
  a use); ghosts older than `horizon` recency spans go.
* `settle()` (prefix): counts those re-stores by ghost class and spends the ghosts, turns the counts into the
  new bonus by the policy's rule, drops old ghosts, saves bonus and watermark.
`bonus()` only reads: what read commands (`kvfs ls`) order by.

New rows are those above the id watermark, and those created since the last check: SQLite reuses the ids of
deleted rows at the top of the table, so the id watermark alone would miss some.  Cost per pass: index range
scans over the new rows and the dropped ghosts, plus one upsert per evicted block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from kvfs.catalog.models import NO_RANK
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.catalog.catalog import Catalog

HASH_PREFIX = 16
_CHUNK = 5000
# A ghost's class (adaptive's three; 2q and prefix store FRESH or ONCE, i.e. `reused`): `reused` says hits > 0
# when the block went, `frequent` (v9) hits >= 2.
FRESH, ONCE, FREQUENT = 0, 1, 2

# Rows new since the watermark whose key has an older ghost of `policy`.  CROSS JOIN keeps SQLite driving from
# the new rows and probing the ghosts' primary key (PostgreSQL plans it as any join).
_NEW_ROWS = "((b.id > :lo AND b.id <= :hi) OR (b.last_access >= :since AND b.created >= :since))"
_GHOST_OF_ROW = (
    "g.policy = :policy AND g.namespace_id = b.namespace_id AND g.rank = b.rank AND g.grp = b.grp "
    f"AND g.hash_prefix = substr(b.block_hash, 1, {HASH_PREFIX}) AND g.last_seen < b.created"
)
_RETURNED = (
    "SELECT g.namespace_id, g.rank, g.grp, g.hash_prefix, g.reused FROM blocks b CROSS JOIN policy_ghosts g "
    f"WHERE {_NEW_ROWS} AND {_GHOST_OF_ROW}"
)
_REVIVE = (
    "UPDATE blocks SET hits = hits + 1 WHERE hits = 0 "
    "AND ((id > :lo AND id <= :hi) OR (last_access >= :since AND created >= :since)) AND EXISTS ("
    "SELECT 1 FROM policy_ghosts g WHERE g.policy = :policy AND g.namespace_id = blocks.namespace_id "
    "AND g.rank = blocks.rank AND g.grp = blocks.grp "
    f"AND g.hash_prefix = substr(blocks.block_hash, 1, {HASH_PREFIX}) AND g.last_seen < blocks.created)"
)
_COUNT = "SELECT reused, count(*) FROM policy_ghosts WHERE policy = :policy GROUP BY reused"
_PRUNE = "DELETE FROM policy_ghosts WHERE policy = :policy AND last_seen < :cutoff"
# Three scalar subqueries: each one index lookup (together in one SELECT they would scan).
_SPAN = (
    "SELECT (SELECT max(id) FROM blocks), (SELECT min(last_access) FROM blocks), "
    "(SELECT max(last_access) FROM blocks)"
)
_BONUS = (
    "SELECT (SELECT beta FROM policy_states WHERE policy = :policy), (SELECT min(last_access) FROM blocks), "
    "(SELECT max(last_access) FROM blocks)"
)
_STATE = "SELECT block_id, access_time, beta FROM policy_states WHERE policy = :policy"
_SAVE = (
    "INSERT INTO policy_states (policy, block_id, access_time, beta) VALUES (:policy, :block_id, :t, :beta) "
    "ON CONFLICT (policy) DO UPDATE SET block_id = excluded.block_id, access_time = excluded.access_time, "
    "beta = excluded.beta"
)

# (re-stores of fresh ghosts, of reused ghosts, fresh ghosts left, reused ghosts left, old bonus) -> new bonus
AdaptFn = Callable[[int, int, int, int, float], float]


@dataclass(frozen=True, slots=True)
class Revived:
    revived: int
    ghosts_dropped: int


@dataclass(frozen=True, slots=True)
class Settled:
    beta: float
    span: float  # newest minus oldest last access in the catalog
    returned_fresh: int
    returned_reused: int
    ghosts_dropped: int


def _p(catalog: Catalog) -> str:
    return "?" if catalog.dialect == "sqlite" else "%s"


def _span(conn: Connection) -> tuple[Any, Any, Any]:
    max_id, oldest, newest = conn.execute(text(_SPAN)).one()
    return max_id, oldest, newest


def revive(catalog: Catalog, *, policy: str, horizon: float) -> Revived:
    """Count re-stores of `policy`'s ghosts as uses (hits 0 -> 1); drop old ghosts.  One transaction."""
    with catalog._write("ghosts_revive") as conn:
        max_id, oldest, newest = _span(conn)
        if max_id is None:
            return Revived(0, 0)
        row = conn.execute(text(_STATE), {"policy": policy}).first()
        lo, hi = (int(row[0]) if row else 0), int(max_id)
        revived = 0
        if row is not None:  # on the first check there are no ghosts yet: nothing can be a re-store
            params = {"policy": policy, "lo": lo, "hi": hi, "since": float(row[1])}
            revived = conn.execute(text(_REVIVE), params).rowcount
        cutoff = float(newest) - horizon * (float(newest) - float(oldest))
        dropped = conn.execute(text(_PRUNE), {"policy": policy, "cutoff": cutoff}).rowcount
        beta = 0.0 if row is None else float(row[2])
        conn.execute(
            text(_SAVE), {"policy": policy, "block_id": max(hi, lo), "t": float(newest), "beta": beta}
        )
    return Revived(max(revived, 0), max(dropped, 0))


def settle(catalog: Catalog, *, policy: str, adapt: AdaptFn, initial_beta: float, horizon: float) -> Settled:
    """Count re-stores of `policy`'s ghosts since the last call by class and spend those ghosts, adapt and save
    the bonus, drop old ghosts.  One transaction."""
    with catalog._write("ghosts_settle") as conn:
        max_id, oldest, newest = _span(conn)
        row = conn.execute(text(_STATE), {"policy": policy}).first()
        beta = initial_beta if row is None else float(row[2])
        if max_id is None:
            return Settled(beta, 0.0, 0, 0, 0)
        span = float(newest) - float(oldest)
        fresh = reused = 0
        if row is not None:  # the first call has no ghosts yet: nothing can be a re-store
            params = {"policy": policy, "lo": int(row[0]), "hi": int(max_id), "since": float(row[1])}
            found = {tuple(r[:4]): bool(r[4]) for r in conn.execute(text(_RETURNED), params)}
            reused = sum(found.values())
            fresh = len(found) - reused
            if found:
                p = _p(catalog)
                conn.exec_driver_sql(
                    f"DELETE FROM policy_ghosts WHERE policy = {p} AND namespace_id = {p} AND rank = {p} "
                    f"AND grp = {p} AND hash_prefix = {p}",
                    [(policy, *ident) for ident in found],
                )
        left = {bool(r): int(c) for r, c in conn.execute(text(_COUNT), {"policy": policy})}
        beta = adapt(fresh, reused, left.get(False, 0), left.get(True, 0), beta)
        cutoff = float(newest) - horizon * span
        dropped = conn.execute(text(_PRUNE), {"policy": policy, "cutoff": cutoff}).rowcount
        lo = int(row[0]) if row is not None else 0
        conn.execute(
            text(_SAVE),
            {"policy": policy, "block_id": max(int(max_id), lo), "t": float(newest), "beta": beta},
        )
    return Settled(beta, span, fresh, reused, max(dropped, 0))


@dataclass(frozen=True, slots=True)
class ClassesSettled:
    """What `settle_classes` found and saved: per class (FRESH, ONCE, FREQUENT) ghosts stored again since the
    last call and ghosts left, the recency span, the rows revived, the state saved."""

    returned: tuple[int, int, int]
    ghosts: tuple[int, int, int]
    span: float
    revived: int
    ghosts_dropped: int
    beta: float
    extra: str | None


# (returned per class, ghosts left per class, stored beta, stored extra or None) -> (beta, extra) to save
ClassesAdaptFn = Callable[[tuple[int, int, int], tuple[int, int, int], float, str | None], tuple[float, str]]

_RETURNED_CLASSES = (
    "SELECT b.id, g.namespace_id, g.rank, g.grp, g.hash_prefix, g.reused, g.frequent "
    f"FROM blocks b CROSS JOIN policy_ghosts g WHERE {_NEW_ROWS} AND {_GHOST_OF_ROW}"
)
_COUNT_CLASSES = (
    "SELECT reused, frequent, count(*) FROM policy_ghosts WHERE policy = :policy GROUP BY reused, frequent"
)
# A re-store is a use (ARC's ghost hit goes to T2): a live never-read row becomes read once.
_REVIVE_ID = "UPDATE blocks SET hits = 1 WHERE id = {p} AND hits = 0 AND NOT orphan AND NOT superseded"
_STATE_EXTRA = "SELECT block_id, access_time, beta, extra FROM policy_states WHERE policy = :policy"
_SAVE_EXTRA = (
    "INSERT INTO policy_states (policy, block_id, access_time, beta, extra) "
    "VALUES (:policy, :block_id, :t, :beta, :extra) ON CONFLICT (policy) DO UPDATE SET "
    "block_id = excluded.block_id, access_time = excluded.access_time, beta = excluded.beta, extra = excluded.extra"
)
_SET_EXTRA = "UPDATE policy_states SET extra = :extra WHERE policy = :policy"
_LOAD = (
    "SELECT (SELECT beta FROM policy_states WHERE policy = :policy), "
    "(SELECT extra FROM policy_states WHERE policy = :policy), (SELECT min(last_access) FROM blocks), "
    "(SELECT max(last_access) FROM blocks)"
)


def _class(reused: Any, frequent: Any) -> int:
    return FREQUENT if frequent else ONCE if reused else FRESH


def settle_classes(
    catalog: Catalog, *, policy: str, horizon: float, adapt: ClassesAdaptFn, initial_beta: float
) -> ClassesSettled:
    """`settle` with three ghost classes and 2q's revive (adaptive): count re-stores of `policy`'s ghosts since
    the last call by class and spend those ghosts, make the re-stored rows that are still live and never read
    read once, let `adapt` turn the counts into the state to save, drop ghosts older than `horizon` spans.
    One transaction."""
    with catalog._write("ghosts_settle") as conn:
        max_id, oldest, newest = _span(conn)
        row = conn.execute(text(_STATE_EXTRA), {"policy": policy}).first()
        beta = initial_beta if row is None else float(row[2])
        extra = None if row is None else row[3]
        if max_id is None:
            return ClassesSettled((0, 0, 0), (0, 0, 0), 0.0, 0, 0, beta, extra)
        span = float(newest) - float(oldest)
        returned = [0, 0, 0]
        revived = 0
        if row is not None:  # the first call has no ghosts yet: nothing can be a re-store
            params = {"policy": policy, "lo": int(row[0]), "hi": int(max_id), "since": float(row[1])}
            found: dict[tuple[Any, ...], int] = {}
            ids: set[int] = set()
            for r in conn.execute(text(_RETURNED_CLASSES), params):
                found[tuple(r[1:5])] = _class(r[5], r[6])
                ids.add(int(r[0]))
            for cls in found.values():
                returned[cls] += 1
            if found:
                p = _p(catalog)
                revived = max(
                    0, conn.exec_driver_sql(_REVIVE_ID.format(p=p), [(i,) for i in sorted(ids)]).rowcount
                )
                conn.exec_driver_sql(
                    f"DELETE FROM policy_ghosts WHERE policy = {p} AND namespace_id = {p} AND rank = {p} "
                    f"AND grp = {p} AND hash_prefix = {p}",
                    [(policy, *ident) for ident in found],
                )
        left = [0, 0, 0]
        for reused, frequent, count in conn.execute(text(_COUNT_CLASSES), {"policy": policy}):
            left[_class(reused, frequent)] += int(count)
        beta, extra = adapt((returned[0], returned[1], returned[2]), (left[0], left[1], left[2]), beta, extra)
        cutoff = float(newest) - horizon * span
        dropped = conn.execute(text(_PRUNE), {"policy": policy, "cutoff": cutoff}).rowcount
        lo = int(row[0]) if row is not None else 0
        conn.execute(
            text(_SAVE_EXTRA),
            {
                "policy": policy,
                "block_id": max(int(max_id), lo),
                "t": float(newest),
                "beta": beta,
                "extra": extra,
            },
        )
    return ClassesSettled(
        (returned[0], returned[1], returned[2]),
        (left[0], left[1], left[2]),
        span,
        revived,
        max(dropped, 0),
        beta,
        extra,
    )


def save_extra(catalog: Catalog, policy: str, extra: str) -> None:
    """Replace `policy`'s stored state beyond beta (after a pass; the row exists once `settle_classes` ran)."""
    with catalog._write("ghosts_save_extra") as conn:
        conn.execute(text(_SET_EXTRA), {"policy": policy, "extra": extra})


def load(catalog: Catalog, *, policy: str) -> tuple[float | None, str | None, float]:
    """(stored beta or None, stored extra or None, recency span now), as `settle_classes` last left them.
    Reads only."""
    with catalog._read("ghosts_load") as conn:
        beta, extra, oldest, newest = conn.execute(text(_LOAD), {"policy": policy}).one()
    span = 0.0 if oldest is None else float(newest) - float(oldest)
    return (None if beta is None else float(beta)), extra, span


def remember(
    catalog: Catalog, policy: str, evicted: Iterable[tuple[BlockKey, float, bool]], *, keep_newest: bool
) -> int:
    """Record evicted blocks (key, last access, was reused) as `policy`'s ghosts; returns how many rows.

    `keep_newest` (2q): a key seen twice keeps its newest last access, in the batch and against a ghost already
    stored; otherwise (prefix) the last record of the key wins, with its class."""
    return _remember(catalog, policy, ((k, t, FRESH + int(r)) for k, t, r in evicted), keep_newest)


def remember_classes(catalog: Catalog, policy: str, evicted: Iterable[tuple[BlockKey, float, int]]) -> int:
    """Record evicted blocks (key, last access, class: FRESH, ONCE or FREQUENT) as `policy`'s ghosts, the last
    record of a key winning with its class (adaptive); returns how many rows."""
    return _remember(catalog, policy, evicted, False)


def _remember(
    catalog: Catalog, policy: str, evicted: Iterable[tuple[BlockKey, float, int]], keep_newest: bool
) -> int:
    ns_ids = {ns.name: ns.id for ns in catalog.namespaces()}
    rows: dict[tuple[int, int, int, str], tuple[float, int]] = {}
    for key, last_access, cls in evicted:
        ns_id = ns_ids.get(key.namespace)
        if ns_id is None:
            continue
        ident = (ns_id, NO_RANK if key.rank is None else key.rank, key.group, key.block_hash[:HASH_PREFIX])
        old = rows.get(ident)
        if keep_newest and old is not None and old[0] > last_access:
            continue
        rows[ident] = (last_access, cls)
    if not rows:
        return 0
    p = _p(catalog)
    greatest = "max" if catalog.dialect == "sqlite" else "GREATEST"
    last_seen = (
        f"{greatest}(policy_ghosts.last_seen, excluded.last_seen)" if keep_newest else "excluded.last_seen"
    )
    statement = (
        "INSERT INTO policy_ghosts (policy, namespace_id, rank, grp, hash_prefix, last_seen, reused, frequent) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
        "ON CONFLICT (policy, namespace_id, rank, grp, hash_prefix) DO UPDATE "
        f"SET last_seen = {last_seen}, reused = excluded.reused, frequent = excluded.frequent"
    )
    # Key order: near-sequential B-tree inserts, as for the catalog's upserts.
    params = sorted((policy, *ident, last, cls > FRESH, cls > ONCE) for ident, (last, cls) in rows.items())
    with catalog._write("ghosts_remember") as conn:
        for start in range(0, len(params), _CHUNK):
            conn.exec_driver_sql(statement, params[start : start + _CHUNK])
    return len(params)


def bonus(catalog: Catalog, *, policy: str, default_beta: float) -> tuple[float, float]:
    """(beta, recency span) as `settle` last left them: the stored bonus (`default_beta` before the first pass)
    and the newest minus the oldest last access now.  Reads only."""
    with catalog._read("ghosts_bonus") as conn:
        beta, oldest, newest = conn.execute(text(_BONUS), {"policy": policy}).one()
    span = 0.0 if oldest is None else float(newest) - float(oldest)
    return (default_beta if beta is None else float(beta)), span


def ghost_counts(catalog: Catalog, policy: str) -> dict[bool, int]:
    """`policy`'s ghosts by class (reused or not)."""
    with catalog._read("ghosts_count") as conn:
        return {bool(r): int(c) for r, c in conn.execute(text(_COUNT), {"policy": policy})}
