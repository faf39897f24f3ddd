"""S3-FIFO on the catalog (`--policy s3fifo`): Yang et al.'s small and main FIFO queues, with the prefix rules.

Every row carries S3-FIFO's state (schema v8, kvfs.catalog.fifo): its queue, its position and a 2-bit use
counter, kept by journal apply (a store enters the small queue, or main if its key is a FIFO ghost; a use
raises the counter).  A pass offers, each stream stopping as soon as enough bytes are offered:

1. orphans (their parent is gone: vLLM can never load them), oldest first;
2. superseded leaves (never read; their parent got a newer child), oldest first;
3. S3-FIFO's sweep (`kvfs.policy.s3fifo_core.sweep`, the order `adaptive` replays) over the two queues read in
   position order: while the small queue holds at least `SMALL_SHARE` of the bytes that stay, its oldest row
   goes (to main with its counter cleared if it was used, else as a victim whose key becomes a FIFO ghost);
   otherwise main's oldest (back to main's tail with one less on its counter if it has one, else a victim).

Tails before heads: a request's blocks enter a queue deepest first, so a chain's tail is ahead of its head.
The request in flight (rows used or created at or after the pass's protection time) is set aside, never
offered.  The sweep's moves are decisions like its victims: they are collected here while planning and handed
to the planner (`take_pass_writes`), which gives them to the executor to apply with the pass's first deletions
(`kvfs.eviction.execute_plan`); a dry run (`kvfs gc --dry-run`) or a listing (`kvfs ls`) writes nothing.  The
FIFO ghosts (small-queue victims of capacity or quota) are kept to as many keys as the main queue's share of
the rows that stay, the bound S3-FIFO gives them.  `kvfs.replay.s3fifo` replays the same order in memory,
block for block (tests/kvfs/test_replay_s3fifo.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from kvfs.catalog.fifo import PROMOTE, PassWrites, QueuedRow
from kvfs.catalog.streams import BlockClass
from kvfs.policy import register_policy, s3fifo_core
from kvfs.policy.base import Candidate, EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog


def ghost_limit(rows: int, total: int, keep: int) -> int:
    """FIFO ghosts to keep: as many keys as the main queue's share of what stays holds rows (rows counted at the
    scope's mean size; the same as S3-FIFO's bound where every block has one size)."""
    if total <= 0:
        return 1
    return max(1, (keep - s3fifo_core.small_target(keep)) * rows // total)


class _PassState:
    """The moves of one pass's sweeps, in the order rows reached main's tail (later calls of `candidates` in the
    same pass read the queues as these moves left them), and the ghost bound."""

    def __init__(self) -> None:
        self.moved: dict[int, QueuedRow] = {}
        self.ghost_limit = 0

    def writes(self) -> PassWrites | None:
        if not self.ghost_limit:
            return None
        moves = [(r.block_id, PROMOTE if r.promoted else r.laps) for r in self.moved.values()]
        return PassWrites(moves=moves, ghost_limit=self.ghost_limit)


class _Queues:
    """The two queues of one scope as `s3fifo_core.sweep` sees them: the catalog's rows in position order, with
    the moves already made in this pass at main's tail (they are not in the database until the pass commits).
    Sizes are bytes, the request in flight included, as the planner plans in bytes."""

    def __init__(
        self, catalog: Catalog, namespace_ids: Sequence[int] | None, small: int, main: int, state: _PassState
    ) -> None:
        self._streams = (
            catalog.stream_fifo_queue(namespace_ids, main=False),
            catalog.stream_fifo_queue(namespace_ids, main=True),
        )
        self._moved = state.moved
        scope = None if namespace_ids is None else set(namespace_ids)
        self._tail: deque[QueuedRow] = deque(
            r for r in state.moved.values() if scope is None or r.namespace_id in scope
        )
        for row in self._tail:
            if row.promoted:  # small in the database, main since an earlier sweep of this pass
                small -= row.size
                main += row.size
        self._sizes = [small, main]
        self._next: list[QueuedRow | None] = [None, None]

    def _fetch(self, main: bool) -> QueuedRow | None:
        for row in self._streams[main]:
            if row.block_id not in self._moved:  # else its place is main's tail
                return row
        if main and self._tail:
            return self._tail.popleft()
        return None

    def size(self, main: bool) -> int:
        if self._next[main] is None:
            self._next[main] = self._fetch(main)
            if self._next[main] is None:
                return 0
        # Never 0 while a row is left (the sizes were read in another snapshot than the rows).
        size = self._sizes[main]
        return size if size > 0 else 1

    def pop(self, main: bool) -> QueuedRow:
        row = self._next[main] if self._next[main] is not None else self._fetch(main)
        self._next[main] = None
        assert row is not None, "pop() after size() said the queue is empty"
        self._sizes[main] -= row.size
        return row

    def push(self, row: QueuedRow, main: bool) -> None:
        # Only to main: a promotion from small (counter cleared by the sweep) or another lap.
        if row.main:
            row.laps += 1
        else:
            row.promoted = row.main = True
        self._moved.pop(row.block_id, None)
        self._moved[row.block_id] = row
        self._tail.append(row)
        self._sizes[True] += row.size

    def put_back(self, rows: list[QueuedRow]) -> None:
        """Rows set aside stay where they are in the database; the sweep is over."""

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


@register_policy
class S3FifoPolicy(EvictionPolicy):
    name: ClassVar[str] = "s3fifo"
    description: ClassVar[str] = (
        "S3-FIFO: orphans and superseded leaves first, then a small FIFO for new blocks (10%) and a main FIFO "
        "with a 2-bit counter, ghosts of small-queue victims; ties: deeper prefix-chain position first"
    )

    def __init__(self) -> None:
        self._pass = _PassState()

    def prepare(self, catalog: Catalog) -> None:
        self._pass = _PassState()

    def take_pass_writes(self) -> PassWrites | None:
        writes = self._pass.writes()
        self._pass = _PassState()
        return writes

    def candidates(
        self,
        catalog: Catalog,
        *,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
    ) -> Iterator[Candidate]:
        ordered = self.ordered(
            catalog, namespace_ids=namespace_ids, protect_after=protect_after, limit_bytes=limit_bytes
        )
        try:
            for cand, _ in ordered:
                yield cand
        finally:
            ordered.close()

    def ordered(
        self,
        catalog: Catalog,
        *,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
        queue_sizes: tuple[int, int, int, int] | None = None,
    ) -> Generator[tuple[Candidate, int | None], None, None]:
        """`candidates`, each with its class: None for orphans and superseded leaves, else min(hits, 2) (what
        `adaptive`, which runs this order as one of its candidates, records with its ghosts).  `queue_sizes`:
        `Catalog.fifo_queue_sizes` of the scope, if the caller read it already."""
        if limit_bytes <= 0:
            return
        if queue_sizes is None:
            queue_sizes = catalog.fifo_queue_sizes(namespace_ids)
        rows, total, small_bytes, main_bytes = queue_sizes
        keep = max(0, total - limit_bytes)
        self._pass.ghost_limit = max(self._pass.ghost_limit, ghost_limit(rows, total, keep))
        yield from self._order(
            catalog, namespace_ids, protect_after, limit_bytes, keep, small_bytes, main_bytes
        )

    def _order(
        self,
        catalog: Catalog,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        limit_bytes: int,
        keep: int,
        small_bytes: int,
        main_bytes: int,
    ) -> Generator[tuple[Candidate, int | None], None, None]:
        offered = 0
        taken: set[int] = set()
        for block_class in (BlockClass.ORPHAN, BlockClass.SUPERSEDED):
            stream = catalog.stream_candidates(namespace_ids, protect_after, block_class)
            try:
                for cand in stream:
                    if cand.block_id is not None:
                        taken.add(cand.block_id)
                    yield cand, None
                    offered += cand.size
                    if offered >= limit_bytes:
                        return
            finally:
                stream.close()
        queues = _Queues(catalog, namespace_ids, small_bytes, main_bytes, self._pass)
        sweep = s3fifo_core.sweep(
            queues, s3fifo_core.small_target(keep), protect_after, lambda r: r.block_id in taken
        )
        try:
            for row in sweep:
                yield Candidate(row.block_id, row.key, row.size, row.access, row.chain_pos), min(row.hits, 2)
                offered += row.size
                if offered >= limit_bytes:
                    return
        finally:
            sweep.close()
            queues.close()
