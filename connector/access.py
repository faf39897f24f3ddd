"""Access records for the journal, written off the scheduler thread (no vLLM import)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from connector.naming import NamespaceDir

if TYPE_CHECKING:
    from kvfs.journal import JournalWriter


class AccessRecorder:
    """Journals access records from a background thread: the scheduler thread only appends (time, keys, chain
    positions)."""

    def __init__(self, journal: JournalWriter, namespace: NamespaceDir) -> None:
        self.journal = journal
        self.namespace = namespace
        self._queue: deque[tuple[float, list[bytes], Sequence[int] | None]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._drain_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kvfs-access-journal", daemon=True)
        self._thread.start()

    def record(
        self, keys: Iterable[bytes], chain_pos: Sequence[int] | None = None, now: float | None = None
    ) -> None:
        """`chain_pos`: each key's position in its request's prefix chain (-1 or None: unknown); `now`: the
        records' time (the request's, connector/chain.py `request_time`; None: the call's)."""
        self._queue.append((time.time() if now is None else now, list(keys), chain_pos))
        if not self._wake.is_set():
            self._wake.set()

    def _drain(self) -> None:
        with self._drain_lock:
            while self._queue:
                when, keys, positions = self._queue.popleft()
                for i, key in enumerate(keys):
                    pos = positions[i] if positions is not None else -1
                    for rank in range(self.namespace.world_size):
                        self.journal.record_access(
                            self.namespace.block_key(key, rank), now=when, chain_pos=pos
                        )

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.5)
            self._wake.clear()
            self._drain()

    def flush(self) -> None:
        self._drain()
        self.journal.flush()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
        self.journal.close()
