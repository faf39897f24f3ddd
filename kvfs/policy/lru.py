"""Least recently used: oldest last access first; ties evict the deeper chain position first.

A prefix chain's head is needed by every request that shares the prefix, its tail only by the longest ones, so
among equally old blocks the tail goes first and the head outlives it.  Blocks of unknown position (-1, e.g.
found by a scan) sort after every known position of the same age.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Select, select

from kvfs.catalog.models import NO_RANK, Block
from kvfs.layout import BlockKey
from kvfs.policy import register_policy
from kvfs.policy.base import Candidate, EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

# Rows fetched per round trip; the planner usually stops long before the end of the stream.
STREAM_CHUNK = 5000


def block_columns() -> tuple[Any, ...]:
    """The columns a Candidate is built from, in `stream_rows` order."""
    return (
        Block.id,
        Block.namespace_id,
        Block.rank,
        Block.grp,
        Block.block_hash,
        Block.fmt,
        Block.size,
        Block.last_access,
        Block.chain_pos,
    )


def lru_order() -> tuple[Any, ...]:
    """Oldest last access first; ties: the deeper prefix-chain position first (a chain loses its tail before
    its head), then the row id.  The order of `lru`, and the base that `slru`, `2q` and `prefix` refine."""
    return (Block.last_access.asc(), Block.chain_pos.desc(), Block.id.asc())


def eligible(query: Select[Any], namespace_ids: Sequence[int] | None, protect_after: float) -> Select[Any]:
    """Restrict to the scope and drop protected blocks (recent last access or creation)."""
    query = query.where(Block.last_access < protect_after, Block.created < protect_after)
    if namespace_ids is not None:
        query = query.where(Block.namespace_id.in_(list(namespace_ids)))
    return query


def stream_rows(
    catalog: Catalog, query: Select[Any], names: dict[int, str], *, chunk: int | None = None
) -> Iterator[Candidate]:
    """Candidates of `query` (selecting `block_columns()`) through a streaming cursor.  A paused generator keeps
    its cursor (a policy may interleave several); closing it, or running out, releases it."""
    with catalog.engine.connect() as conn:
        # STREAM_CHUNK read per call, not bound at import (tests shrink it to cross partition boundaries).
        result = conn.execution_options(stream_results=True, yield_per=chunk or STREAM_CHUNK).execute(query)
        try:
            # Whole partitions (one fetchmany each): per-row fetch overhead dominated planning time.
            for rows in result.partitions():
                for block_id, ns_id, rank, grp, block_hash, fmt, size, last_access, chain_pos in rows:
                    key = BlockKey(names[ns_id], None if rank == NO_RANK else rank, grp, block_hash, fmt)
                    yield Candidate(block_id, key, size, last_access, chain_pos)
        finally:
            result.close()


def namespace_names(catalog: Catalog) -> dict[int, str]:
    return {ns.id: ns.name for ns in catalog.namespaces()}


@register_policy
class LruPolicy(EvictionPolicy):
    name: ClassVar[str] = "lru"
    description: ClassVar[str] = "oldest last access first; ties: deeper prefix-chain position first"

    def candidates(
        self,
        catalog: Catalog,
        *,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
    ) -> Iterator[Candidate]:
        if limit_bytes <= 0:
            return
        query = eligible(select(*block_columns()), namespace_ids, protect_after).order_by(*lru_order())
        rows = stream_rows(catalog, query, namespace_names(catalog))
        offered = 0
        try:
            for cand in rows:
                yield cand
                offered += cand.size
                if offered >= limit_bytes:
                    return
        finally:
            rows.close()
