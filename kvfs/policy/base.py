"""What an eviction policy is: an ordering of catalog blocks, streamed from SQL.

A policy only decides *order*.  Which limits apply (capacity, TTL, quotas, retired namespaces) and how many
blocks to take is the planner's job (`kvfs.gc.plan_pass`); deleting them is the executor's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.catalog import Catalog


# Not frozen: a frozen dataclass's __init__ costs ~3x more, and the planner builds 100k+ of these.
@dataclass(slots=True)
class Candidate:
    """One block offered for eviction, with the recency it was chosen on (for the pre-delete recheck)."""

    block_id: int
    key: BlockKey
    size: int
    last_access: float
    chain_pos: int = -1  # index in the prefix chain (-1: unknown); the `prefix` policy's tie-break


class EvictedBlock(Protocol):
    """What `EvictionPolicy.evicted` is told of each deleted block (a `kvfs.eviction.Victim` or a `Candidate`)."""

    key: BlockKey
    size: int
    last_access: float


class EvictionPolicy(ABC):
    """Orders blocks for eviction.  Implementations stream their SQL: never load the whole catalog."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def prepare(self, catalog: Catalog) -> None:  # noqa: B027 - optional hook
        """Called once by an eviction pass before it plans: the policy's bookkeeping writes (2q's re-stores,
        prefix's bonus) happen here and only here, so read commands (`kvfs ls`) that list `candidates` change
        nothing.  Default: nothing."""

    @abstractmethod
    def candidates(
        self,
        catalog: Catalog,
        *,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
    ) -> Iterator[Candidate]:
        """Yield blocks in eviction order until at least `limit_bytes` have been offered (or none are left).

        `namespace_ids=None` means every namespace.  Blocks whose `last_access` or `created` is >= `protect_after`
        are never offered (in-flight writes and blocks just read).  The caller may stop iterating early; the
        generator then releases its database resources.
        """

    def evicted(self, catalog: Catalog, victims: Sequence[EvictedBlock]) -> None:  # noqa: B027 - optional hook
        """Called by the executor after `victims` (chosen by capacity or quota) were deleted and their rows
        removed.  Policies that keep history (2q's ghosts) record it here, so a dry run or a pass cut short
        records nothing it did not delete.  Default: nothing."""
