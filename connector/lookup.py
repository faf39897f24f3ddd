"""Non-blocking existence checks for the scheduler thread.

`query()` is a dict lookup: a key never seen is queued and answered RETRY (vLLM asks again next step), a known
key is answered from the cache; answers older than the TTL are still returned but refreshed in the background
(a stale hit that was evicted meanwhile ends as a load miss and a recompute, which is safe).  One background
thread stats queued keys in batches (every rank's file must exist for a hit).  Completed stores are verified the
same way before they are announced, so a dropped or failed store is never reported as stored.  No vLLM import.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

from connector import metrics


class Presence(Enum):
    HIT = "hit"
    MISS = "miss"
    RETRY = "retry"


class ExistenceCache:
    def __init__(
        self,
        paths_of: Callable[[bytes], list[str]],
        *,
        ttl_s: float = 2.0,
        max_entries: int = 1 << 18,
        stat_threads: int = 8,
    ) -> None:
        self._paths_of = paths_of
        self._ttl = ttl_s
        self._max = max_entries
        # A condition, so that an idle engine step can wait for answers (wait_progress) instead of spinning.
        self._lock = threading.Condition()
        self._wake = threading.Event()
        # key -> (exists, checked_at)
        self._known: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()
        self._queued: set[bytes] = set()
        self._pending: list[bytes] = []
        self._verify: list[bytes] = []
        self._verified: list[bytes] = []  # stores confirmed on disk, to announce
        self._unverified: list[bytes] = []  # stores not on disk after completion
        self._in_flight = 0  # keys taken by the background thread and not yet answered
        self._announced: set[bytes] = set()
        self._vanished: list[bytes] = []  # announced/hit keys found gone
        self._stop = False
        self._pool = ThreadPoolExecutor(stat_threads, thread_name_prefix="kvfs-stat")
        self._thread = threading.Thread(target=self._run, name="kvfs-lookup", daemon=True)
        self._thread.start()

    # -- scheduler thread --

    def query(self, key: bytes) -> Presence:
        now = time.monotonic()
        with self._lock:
            entry = self._known.get(key)
            if entry is None:
                if key not in self._queued:
                    self._queued.add(key)
                    self._pending.append(key)
                    if not self._wake.is_set():
                        self._wake.set()
                metrics.LOOKUP_RETRY.inc()
                return Presence.RETRY
            exists, checked = entry
            if now - checked > self._ttl and key not in self._queued:
                self._queued.add(key)
                self._pending.append(key)
                if not self._wake.is_set():
                    self._wake.set()
        if exists:
            metrics.LOOKUP_HIT.inc()
            return Presence.HIT
        metrics.LOOKUP_MISS.inc()
        return Presence.MISS

    def known_present(self, key: bytes) -> bool:
        with self._lock:
            entry = self._known.get(key)
        return bool(entry and entry[0])

    def verify_stored(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self._verify.extend(keys)
        self._wake.set()

    def stored(self, keys: Iterable[bytes]) -> None:
        """Stores this process itself completed (published, or found present): present now, announced, with no
        stat (one per completed store, handed to the stat threads, slowed a CPU tier's I/O threads by ~20%)."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._confirm_locked(key, True, now)

    def refresh(self, keys: Iterable[bytes]) -> None:
        """Re-check `keys` in the background, keeping the current answers until then."""
        with self._lock:
            for key in keys:
                if key in self._known and key not in self._queued:
                    self._queued.add(key)
                    self._pending.append(key)
        if not self._wake.is_set():
            self._wake.set()

    def mark_missing(self, keys: Iterable[bytes]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._set_locked(key, False, now)

    def take_verified(self) -> tuple[list[bytes], list[bytes]]:
        """(stored keys confirmed on disk since the last call, previously present keys now gone)."""
        with self._lock:
            stored, self._verified = self._verified, []
            vanished, self._vanished = self._vanished, []
        return stored, vanished

    def take_unverified(self) -> list[bytes]:
        with self._lock:
            out, self._unverified = self._unverified, []
        return out

    def idle(self) -> bool:
        with self._lock:
            # Keys being checked count too: between taking a batch and recording its answers, the lists are empty.
            return not (self._pending or self._verify or self._queued or self._in_flight)

    def wait_progress(self, timeout: float) -> None:
        """Block (the GIL released) until the background checker answers a batch or `timeout` passes; at once
        when nothing is queued or being checked."""
        with self._lock:
            if self._pending or self._verify or self._in_flight:
                self._lock.wait(timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.002)
        return self.idle()

    def clear(self) -> None:
        with self._lock:
            self._known.clear()

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- background thread --

    def _set_locked(self, key: bytes, exists: bool, now: float) -> None:
        previous = self._known.get(key)
        if previous is not None and previous[0] and not exists and key in self._announced:
            self._announced.discard(key)
            self._vanished.append(key)
        self._known[key] = (exists, now)
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            old, _ = self._known.popitem(last=False)
            self._announced.discard(old)

    def _exists(self, key: bytes) -> bool:
        paths = self._paths_of(key)
        metrics.EXISTENCE_CHECKS.inc(len(paths))
        return all(os.path.exists(p) for p in paths)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
                verify, self._verify = self._verify, []
                self._in_flight = len(batch) + len(verify)
            if not batch and not verify:
                continue
            results = list(self._pool.map(self._exists, batch + verify)) if batch or verify else []
            now = time.monotonic()
            with self._lock:
                for key, exists in zip(batch, results[: len(batch)], strict=True):
                    self._set_locked(key, exists, now)
                    self._queued.discard(key)
                for key, exists in zip(verify, results[len(batch) :], strict=True):
                    self._confirm_locked(key, exists, now)
                self._in_flight = 0
                self._lock.notify_all()

    def _confirm_locked(self, key: bytes, exists: bool, now: float) -> None:
        """A completed store's answer: announce it once if its file is there."""
        self._set_locked(key, exists, now)
        if not exists:
            self._unverified.append(key)
        elif key not in self._announced:
            self._announced.add(key)
            self._verified.append(key)
