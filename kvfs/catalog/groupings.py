"""Usage groupings for `kvfs du --by rank|age`: aggregates over the blocks table, answered from the catalog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import case, func, select

from kvfs.catalog.models import NO_RANK, Block, Namespace
from kvfs.catalog.records import GroupUsage

if TYPE_CHECKING:
    from kvfs.catalog.catalog import Catalog


def _usage(files: int, nbytes: int | None, la_min: float | None, la_max: float | None) -> GroupUsage:
    return GroupUsage(int(files), int(nbytes or 0), la_min, la_max)


def by_rank(catalog: Catalog) -> list[tuple[str, int | None, GroupUsage]]:
    """(namespace, rank or None, usage) for every namespace and rank that has blocks, by namespace then rank."""
    query = select(
        Block.namespace_id,
        Block.rank,
        func.count(),
        func.sum(Block.size),
        func.min(Block.last_access),
        func.max(Block.last_access),
    ).group_by(Block.namespace_id, Block.rank)
    with catalog._read("usage_by_rank") as conn:
        names = {ns_id: name for ns_id, name in conn.execute(select(Namespace.id, Namespace.name))}
        rows = conn.execute(query).all()
    out = [
        (names.get(ns_id, "?"), None if rank == NO_RANK else int(rank), _usage(n, b, lo, hi))
        for ns_id, rank, n, b, lo, hi in rows
    ]
    return sorted(out, key=lambda g: (g[0], -1 if g[1] is None else g[1]))


def by_age(catalog: Catalog, now: float, bounds: Sequence[float]) -> list[GroupUsage]:
    """Usage per last-access age bucket: bucket i holds ages below `bounds[i]` (and not an earlier bucket's);
    one more bucket after them holds the rest.  Empty buckets are included."""
    whens = [(Block.last_access >= now - bound, index) for index, bound in enumerate(bounds)]
    bucket = case(*whens, else_=len(bounds)).label("bucket")
    query = select(
        bucket, func.count(), func.sum(Block.size), func.min(Block.last_access), func.max(Block.last_access)
    ).group_by(bucket)
    with catalog._read("usage_by_age") as conn:
        found = {int(b): _usage(n, s, lo, hi) for b, n, s, lo, hi in conn.execute(query).all()}
    return [found.get(index, GroupUsage(0, 0, None, None)) for index in range(len(bounds) + 1)]
