"""What an eviction policy is: an ordering of catalog blocks, read through the catalog's streams.

A policy only decides *order*.  Which limits apply (capacity, TTL, quotas, retired namespaces) and how many
blocks to take is the planner's job (`kvfs.eviction.plan_pass`); deleting them is the executor's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

from kvfs.catalog.fifo import PassWrites
from kvfs.catalog.records import Candidate
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

__all__ = ["Candidate", "EvictedBlock", "EvictionPolicy"]


class EvictedBlock(Protocol):
    """What `EvictionPolicy.evicted` is told of each deleted block (a `kvfs.eviction.Victim` or a `Candidate`)."""

    key: BlockKey
    size: int
    last_access: float


class EvictionPolicy(ABC):
    """Orders blocks for eviction.  Implementations read the catalog's candidate streams
    (`Catalog.stream_candidates`), never the whole catalog, and issue no SQL of their own."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def attach(self, catalog: Catalog) -> None:  # noqa: B027 - optional hook
        """Called by an eviction pass before it ingests the journal (and may be called by whoever holds the
        policy for a catalog's lifetime): a policy that learns from the traffic itself (adaptive's shadows)
        subscribes to the records the catalog applies (`Catalog.add_journal_listener`).  Default: nothing."""

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
        Reads only: `kvfs ls` lists this, on catalogs it may not write.

        `namespace_ids=None` means every namespace.  Blocks whose `last_access` or `created` is >= `protect_after`
        are never offered (in-flight writes and blocks just read).  The caller may stop iterating early; the
        generator then releases its database resources.
        """

    def current_order(self) -> str | None:
        """The order this pass ranks victims by, for a policy that chooses among several (adaptive: `shares`,
        `s3fifo`, `2q` or `prefix`), known once `prepare` has run; None for a policy of one order."""
        return None

    def take_pass_writes(self) -> PassWrites | None:
        """Writes the order decided while planning besides its victims (S3-FIFO's sweep moves rows between
        its queues), handed over once per pass: the planner puts them in the plan and the executor applies them
        with the pass's first deletions, never in a dry run.  Default: none."""
        return None

    def evicted(self, catalog: Catalog, victims: Sequence[EvictedBlock]) -> None:  # noqa: B027 - optional hook
        """Called by the executor after `victims` (chosen by capacity or quota) were deleted and their rows
        removed.  Policies that keep history (2q's ghosts) record it here, so a dry run or a pass cut short
        records nothing it did not delete.  Default: nothing."""
