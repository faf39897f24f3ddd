"""The scheduler-side existence cache: stores this process completed are known and announced without a stat,
while other stores are still checked on the mount."""

from __future__ import annotations

import time

from connector.lookup import ExistenceCache, Presence


def test_own_stores_are_present_and_announced_once_without_a_stat(tmp_path):
    stats: list[bytes] = []

    def paths_of(key: bytes) -> list[str]:
        stats.append(key)
        return [str(tmp_path / key.hex())]  # never created: a stat would answer "missing"

    cache = ExistenceCache(paths_of, ttl_s=60)
    try:
        cache.stored([b"a", b"b"])
        assert cache.query(b"a") == Presence.HIT and cache.known_present(b"b")
        assert cache.take_verified() == ([b"a", b"b"], [])
        cache.stored([b"a"])  # stored again (found present): announced only once
        assert cache.take_verified() == ([], [])
        assert stats == [] and cache.idle()
    finally:
        cache.shutdown()


def test_stores_verified_on_the_mount_are_announced_only_if_there(tmp_path):
    (tmp_path / b"a".hex()).write_bytes(b"")
    cache = ExistenceCache(lambda key: [str(tmp_path / key.hex())], ttl_s=60)
    try:
        cache.verify_stored([b"a", b"b"])
        deadline = time.monotonic() + 10
        while not cache.idle() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cache.take_verified() == ([b"a"], [])
        assert cache.take_unverified() == [b"b"]
        assert cache.query(b"a") == Presence.HIT and cache.query(b"b") == Presence.MISS
    finally:
        cache.shutdown()


def test_wait_progress_returns_when_the_checker_answers_and_at_once_when_idle(tmp_path):
    """An idle engine step waits here instead of spinning: it must end as soon as the background checker has
    answered (not at the timeout), and must not wait at all when nothing is being checked."""
    import threading

    release = threading.Event()

    def paths_of(key: bytes) -> list[str]:
        assert release.wait(10)  # a slow mount: the stat is held until the test lets it go
        return [str(tmp_path / key.hex())]

    cache = ExistenceCache(paths_of, ttl_s=60)
    try:
        started = time.monotonic()
        cache.wait_progress(5.0)
        assert time.monotonic() - started < 0.5  # nothing queued: no wait
        assert cache.query(b"k") == Presence.RETRY
        started = time.monotonic()
        cache.wait_progress(0.2)  # the stat is held: the wait ends at its timeout
        assert 0.15 < time.monotonic() - started < 2
        threading.Timer(0.1, release.set).start()
        started = time.monotonic()
        cache.wait_progress(5.0)
        assert time.monotonic() - started < 2.5  # woken by the answer, long before the 5 s timeout
        assert cache.query(b"k") == Presence.MISS
    finally:
        release.set()
        cache.shutdown()
