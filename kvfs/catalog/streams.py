"""Eviction candidates streamed from the catalog, one block class at a time, for the policies to order.

A policy decides order only; the rows it orders come from here (`Catalog.stream_candidates`,
`Catalog.segment_bytes`), so policies issue no SQL.  Every stream is in LRU order: oldest last access first,
ties: the deeper prefix-chain position first (a chain loses its tail before its head), then the row id.

The classes that have a partial LRU index (`ORPHAN`, `SUPERSEDED`, `FRESH`, `REUSED`) repeat the index's WHERE
text literally (models.PARTIAL_LRU_INDEXES): that is what lets SQLite and PostgreSQL pick the index, so a rare
class costs nothing to look for.  `PROBATION`/`PROTECTED` (slru, 2q) keep the bound `hits` comparisons they
always had.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, case, func, select, text

from kvfs.catalog.models import FRESH, NO_RANK, ORPHAN, REUSED, SUPERSEDED, Block, Namespace
from kvfs.catalog.records import Candidate
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.catalog.catalog import Catalog

# Rows fetched per round trip; the planner usually stops long before the end of the stream.
STREAM_CHUNK = 5000


class BlockClass(enum.Enum):
    ALL = "all"
    ORPHAN = "orphan"  # its parent was removed: vLLM can never load it
    SUPERSEDED = "superseded"  # a never-read leaf whose parent got a newer child (not an orphan)
    FRESH = "fresh"  # never read since stored, not an orphan, not superseded
    REUSED = "reused"  # read at least once, not an orphan
    PROBATION = "probation"  # never read since stored (slru's probation segment)
    PROTECTED = "protected"  # read at least once (slru's protected segment)


_COLUMNS = (
    Block.id,
    Block.namespace_id,
    Block.rank,
    Block.grp,
    Block.block_hash,
    Block.fmt,
    Block.size,
    Block.last_access,
    Block.chain_pos,
    Block.hits,
)
_LRU_ORDER = (Block.last_access.asc(), Block.chain_pos.desc(), Block.id.asc())


def candidate_query(
    namespace_ids: Sequence[int] | None, protect_after: float, block_class: BlockClass
) -> Select[Any]:
    """The statement behind a stream: eligible blocks (scope; last access and creation before
    `protect_after`) of one class, in LRU order."""
    query = select(*_COLUMNS).where(Block.last_access < protect_after, Block.created < protect_after)
    if namespace_ids is not None:
        query = query.where(Block.namespace_id.in_(list(namespace_ids)))
    if block_class is BlockClass.PROBATION:
        query = query.where(Block.hits == 0)
    elif block_class is BlockClass.PROTECTED:
        query = query.where(Block.hits > 0)
    elif block_class is BlockClass.ORPHAN:
        query = query.where(text(ORPHAN))
    elif block_class is not BlockClass.ALL:
        live = query.where(text(f"NOT {ORPHAN}"))
        if block_class is BlockClass.SUPERSEDED:
            query = live.where(text(SUPERSEDED))
        elif block_class is BlockClass.FRESH:
            query = live.where(text(FRESH), text(f"NOT {SUPERSEDED}"))
        else:
            query = live.where(text(REUSED))
    return query.order_by(*_LRU_ORDER)


def stream_candidates(
    catalog: Catalog,
    namespace_ids: Sequence[int] | None,
    protect_after: float,
    block_class: BlockClass,
    *,
    chunk: int | None = None,
) -> Generator[Candidate, None, None]:
    """Candidates through a streaming cursor, in one read transaction.  A paused generator keeps its cursor (a
    policy may interleave several); closing it, or running out, releases it."""
    query = candidate_query(namespace_ids, protect_after, block_class)
    with catalog._read("stream_candidates") as conn:
        names = {ns_id: name for ns_id, name in conn.execute(select(Namespace.id, Namespace.name))}
        # STREAM_CHUNK read per call, not bound at import (tests shrink it to cross partition boundaries).
        result = conn.execution_options(stream_results=True, yield_per=chunk or STREAM_CHUNK).execute(query)
        try:
            # Whole partitions (one fetchmany each): per-row fetch overhead dominated planning time.
            for rows in result.partitions():
                for block_id, ns_id, rank, grp, block_hash, fmt, size, last_access, chain_pos, hits in rows:
                    key = BlockKey(names[ns_id], None if rank == NO_RANK else rank, grp, block_hash, fmt)
                    yield Candidate(block_id, key, size, last_access, chain_pos, hits)
        finally:
            result.close()


def segment_bytes(catalog: Catalog, namespace_ids: Sequence[int] | None) -> tuple[int, int]:
    """(all bytes, never-read bytes) in scope, protected blocks included."""
    query = select(
        func.coalesce(func.sum(Block.size), 0),
        func.coalesce(func.sum(case((Block.hits == 0, Block.size), else_=0)), 0),
    )
    if namespace_ids is not None:
        query = query.where(Block.namespace_id.in_(list(namespace_ids)))
    with catalog._read("segment_bytes") as conn:
        total, probation = conn.execute(query).one()
    return int(total), int(probation)


def class_bytes_sql(dialect: str) -> str:
    """The bytes of the whole catalog's classes other than FRESH (orphans; superseded leaves never read; ONCE;
    FREQUENT): index-only sums over their partial LRU indexes, which carry the class columns and `size` (v9)."""
    hint = {"reused": "", "orphan": "", "superseded": ""}
    if dialect == "sqlite":  # SQLite would rather scan the table for an aggregate
        hint = {name: f"INDEXED BY ix_blocks_{name}_lru" for name in hint}
    return (
        "SELECT o.b, s.b, r.once, r.frequent FROM "
        f"(SELECT coalesce(sum(size), 0) AS b FROM blocks {hint['orphan']} WHERE {ORPHAN}) o, "
        f"(SELECT coalesce(sum(size), 0) AS b FROM blocks {hint['superseded']} "
        f"WHERE {SUPERSEDED} AND NOT {ORPHAN} AND hits = 0) s, "
        "(SELECT coalesce(sum(CASE WHEN hits = 1 THEN size ELSE 0 END), 0) AS once, "
        "coalesce(sum(CASE WHEN hits >= 2 THEN size ELSE 0 END), 0) AS frequent "
        f"FROM blocks {hint['reused']} WHERE {REUSED} AND NOT {ORPHAN}) r"
    )


def class_bytes(catalog: Catalog, namespace_ids: Sequence[int] | None, total: int) -> tuple[int, int, int]:
    """(FRESH, ONCE, FREQUENT bytes) in scope, protected blocks included: live rows (not orphans; FRESH not
    superseded either), as their streams give them.  `total`: the bytes in scope (`fifo.queue_sizes`)."""
    if namespace_ids is None:
        # The classes partition the rows, so FRESH is what the others leave of `total`: its index (most of a
        # tier, 0.1 s at 1M rows) is not read.  `total` comes from an earlier read: a store in between can
        # skew FRESH by its bytes, never below 0.
        with catalog._read("class_bytes") as conn:
            orphan, superseded, once, frequent = conn.execute(text(class_bytes_sql(catalog.dialect))).one()
        fresh = max(0, total - int(orphan) - int(superseded) - int(once) - int(frequent))
        return fresh, int(once), int(frequent)
    # A namespace scope: the indexes lack `namespace_id`, so one aggregate over the scope's rows.
    live = Block.orphan.is_(False)
    query = (
        select(
            func.coalesce(
                func.sum(case(((Block.hits == 0) & live & Block.superseded.is_(False), Block.size), else_=0)),
                0,
            ),
            func.coalesce(func.sum(case(((Block.hits == 1) & live, Block.size), else_=0)), 0),
            func.coalesce(func.sum(case(((Block.hits >= 2) & live, Block.size), else_=0)), 0),
        )
        .select_from(Block)
        .where(Block.namespace_id.in_(list(namespace_ids)))
    )
    with catalog._read("class_bytes") as conn:
        fresh, once, frequent = conn.execute(query).one()
    return int(fresh), int(once), int(frequent)
