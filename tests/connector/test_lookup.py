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
