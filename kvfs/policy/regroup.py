"""Requests regrouped from journal records, for `adaptive`'s shadows (kvfs.policy.adaptive).

The shadows are fed one request at a time (its blocks in chain order), but the journal has no request id.  Two
things say which records are one request:

* **Its time.**  The connector stamps every record of a request with the request's time (connector/chain.py
  `request_time`), so a record whose time is that of an open run joins it, wherever it comes: a batch of
  concurrent requests journals its records interleaved, a request's stores finish on parallel threads in any
  order and come from the worker's journal while its accesses come from the scheduler's.  (Interleaved 8 at a
  time, grouped by position alone, `adaptive` on `sysprompt` replayed through the catalog fell from 0.501 to
  0.489: `python -m tools.bench.engine_records --interleave 8`.)  A block already in that run is the same request
  loading again (after a preemption): not counted twice.
* **Its chain**, for writers that stamp each record apart: a record at chain position 0 starts a request; a
  record at the next position (the run's length), a STORE whose parent is the run's last block, or a record
  whose position is unknown (-1: an ACCESS of a writer that does not record it) continues the last run, unless
  its block is already in it (the same prefix sent again); anything else starts a request (the rest of a chain
  whose head was journaled elsewhere).

A run's blocks go to the shadows in chain order (by position, where every position is known).  Runs are handed
on, oldest first, when `flush` is called (before a pass decides: the last requests must count) or when more
than `MAX_OPEN` are open.  Keys become ints for the shadows: the first 64 bits of the hash, above them a number
per (namespace, rank, group) in the order first seen (0 for the first), so the sample (which reads the low 64
bits) is the in-memory replay's and blocks of two namespaces never meet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey

# Requests open at once (a batch in flight on one or many writers); past it the oldest is handed on as it is.
MAX_OPEN = 1024


class _Run:
    __slots__ = ("blocks", "positions", "members", "last_hash", "times", "ordered")

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.positions: list[int] = []
        self.members: set[int] = set()
        self.last_hash: str | None = None
        self.times: list[float] = []  # the record times that name this run
        self.ordered = True  # positions came in ascending (or unknown)

    def add(self, block: int, pos: int, block_hash: str) -> None:
        positions = self.positions
        if positions and pos < positions[-1]:
            self.ordered = False
        self.blocks.append(block)
        positions.append(pos)
        self.members.add(block)
        self.last_hash = block_hash

    def follows(self, block: int, rec: JournalRecord) -> bool:
        """Whether `rec` (of `block`, at a time of its own) continues this run: the chain rule of the module."""
        pos = rec.chain_pos
        if block in self.members or pos == 0:
            return False
        if pos < 0 or pos == len(self.blocks):
            return True
        return rec.kind is RecordKind.STORE and rec.parent is not None and rec.parent == self.last_hash

    def in_chain_order(self) -> list[int]:
        if self.ordered or min(self.positions) < 0:
            return self.blocks
        order = sorted(range(len(self.blocks)), key=self.positions.__getitem__)
        return [self.blocks[i] for i in order]


class Regrouper:
    def __init__(self, sink: Callable[[list[int]], None]) -> None:
        self._sink = sink
        self._spaces: dict[tuple[str, int | None, int], int] = {}
        self._open: deque[_Run] = deque()  # in the order opened
        self._by_time: dict[float, _Run] = {}
        self._last: _Run | None = None

    def key(self, key: BlockKey) -> int:
        space = self._spaces.setdefault((key.namespace, key.rank, key.group), len(self._spaces))
        return (space << 64) | int(key.block_hash[:16], 16)

    def add(self, records: Sequence[JournalRecord]) -> None:
        by_time = self._by_time
        for rec in records:
            block = self.key(rec.key)
            pos = rec.chain_pos
            run = by_time.get(rec.time)
            if run is not None:  # the same request: its time
                if block not in run.members:
                    run.add(block, pos, rec.key.block_hash)
                self._last = run
                continue
            run = self._last
            if run is None or not run.follows(block, rec):
                run = _Run()
                self._open.append(run)
            run.add(block, pos, rec.key.block_hash)
            run.times.append(rec.time)
            by_time[rec.time] = run
            self._last = run
        while len(self._open) > MAX_OPEN:
            self._hand_on(self._open.popleft())

    def _hand_on(self, run: _Run) -> None:
        """Feed `run` (already out of `_open`) to the sink."""
        for t in run.times:
            if self._by_time.get(t) is run:
                del self._by_time[t]
        if self._last is run:
            self._last = None
        self._sink(run.in_chain_order())

    def flush(self) -> None:
        """Hand on every open run, oldest first."""
        while self._open:
            self._hand_on(self._open.popleft())
