"""Requests regrouped from journal records, for `adaptive`'s shadows (kvfs.policy.adaptive).

The shadows are fed one request at a time (its blocks in chain order), but the journal has no request id: each
writer appends a STORE (with its chain position and parent) for every block it stores and an ACCESS for every
block it finds, in the order it handles a request's blocks.  So a request is a run of consecutive records:

* a record at chain position 0 starts a request;
* a record at the next position (the run's length), a STORE whose parent is the run's last block, or a record
  whose position is unknown (-1: an ACCESS of a writer that does not record it) continues the run, unless its
  block is already in the run (the same prefix sent again);
* anything else starts a request (the rest of a chain whose head was journaled elsewhere).

Records of one apply come from one writer's segments in order, so runs do not interleave.  A run is handed on
when the next one starts, or when `flush` is called (before a pass decides: the last request must count).
Keys become ints for the shadows: the first 64 bits of the hash, above them a number per (namespace, rank,
group) in the order first seen (0 for the first), so the sample (which reads the low 64 bits) is the
in-memory replay's and blocks of two namespaces never meet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey


class Regrouper:
    def __init__(self, sink: Callable[[list[int]], None]) -> None:
        self._sink = sink
        self._spaces: dict[tuple[str, int | None, int], int] = {}
        self._run: list[int] = []
        self._members: set[int] = set()
        self._last_hash: str | None = None

    def key(self, key: BlockKey) -> int:
        space = self._spaces.setdefault((key.namespace, key.rank, key.group), len(self._spaces))
        return (space << 64) | int(key.block_hash[:16], 16)

    def add(self, records: Sequence[JournalRecord]) -> None:
        run, members = self._run, self._members
        for rec in records:
            block = self.key(rec.key)
            pos = rec.chain_pos
            follows = bool(run) and block not in members and pos != 0
            if follows and pos >= 0 and pos != len(run):
                follows = (
                    rec.kind is RecordKind.STORE and rec.parent is not None and rec.parent == self._last_hash
                )
            if not follows:
                self.flush()
                run, members = self._run, self._members
            run.append(block)
            members.add(block)
            self._last_hash = rec.key.block_hash

    def flush(self) -> None:
        """Hand on the run in progress."""
        if self._run:
            self._sink(self._run)
            self._run = []
            self._members = set()
