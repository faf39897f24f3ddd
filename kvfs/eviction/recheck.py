"""The recheck step of an eviction pass: just before a batch is removed, spare what was used since planning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvfs.catalog import Catalog
    from kvfs.eviction.plan import Victim


def still_unused(
    catalog: Catalog, victims: list[Victim], *, protect_after: float | None = None
) -> list[Victim]:
    """The pre-delete recency rule, the one copy (the CLI's recheck and the evictor's both run it): keep only
    victims whose row is still there under the same id and whose last_access has not moved past the one they
    were chosen on, nor into the protection window (>= `protect_after`: --min-age counted from now)."""
    by_id = all(v.block_id is not None for v in victims)
    current: Mapping[Any, float] = (
        catalog.last_access_by_id([v.block_id for v in victims])  # type: ignore[misc]
        if by_id
        else catalog.last_access_of(v.key for v in victims)
    )
    keep = []
    for victim in victims:
        seen = current.get(victim.block_id if by_id else victim.key)
        # Gone (or re-created under a new id), used since it was chosen, or now inside the grace window.
        if seen is None or seen > victim.last_access or (protect_after is not None and seen >= protect_after):
            continue
        keep.append(victim)
    return keep
