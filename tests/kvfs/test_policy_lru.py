"""LRU order from the catalog: oldest access first, deeper chain position first on ties, protection, streaming."""

from __future__ import annotations

import itertools

import pytest

from kvfs.catalog import BlockRow, Catalog
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY, POLICIES, UnknownPolicyError, available_policies, get_policy
from kvfs.policy.lru import LruPolicy

NS_A = "org_model-a_0123456789ab"
NS_B = "org_model-b_ba9876543210"


def key(ns: str, n: int, rank: int | None = 0) -> BlockKey:
    return BlockKey(ns, rank, 0, f"{n:032x}", "kvfs")


def row(ns: str, n: int, last_access: float, *, size: int = 100, chain_pos: int = -1, created: float = 0.0):
    return BlockRow(key(ns, n), size, created or last_access, last_access, chain_pos=chain_pos)


def order(catalog: Catalog, **kw) -> list[int]:
    kw.setdefault("namespace_ids", None)
    kw.setdefault("protect_after", 1e12)
    kw.setdefault("limit_bytes", 1 << 62)
    return [int(c.key.block_hash, 16) for c in LruPolicy().candidates(catalog, **kw)]


def test_oldest_access_first_and_ties_deeper_chain_first(catalog: Catalog) -> None:
    catalog.upsert_blocks(
        [
            row(NS_A, 1, 300.0),
            row(NS_A, 2, 100.0, chain_pos=0),
            row(NS_A, 3, 100.0, chain_pos=5),
            row(NS_A, 4, 100.0, chain_pos=-1),
            row(NS_A, 5, 200.0),
        ]
    )
    # 100.0 ties: position 5 (a tail) before 0 (the head); unknown position (-1) last among them.
    assert order(catalog) == [3, 2, 4, 5, 1]


def test_candidates_carry_key_size_and_recency(catalog: Catalog) -> None:
    catalog.upsert_blocks([BlockRow(key(NS_A, 7, rank=None), 4096, 10.0, 50.0)])
    (cand,) = list(LruPolicy().candidates(catalog, namespace_ids=None, protect_after=1e12, limit_bytes=1))
    assert cand.key == key(NS_A, 7, rank=None)
    assert (cand.size, cand.last_access) == (4096, 50.0)
    assert isinstance(cand.block_id, int)


def test_namespace_scope(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(NS_A, 1, 10.0), row(NS_B, 2, 5.0), row(NS_A, 3, 1.0)])
    ns_b = catalog.namespace_id(NS_B)
    assert order(catalog) == [3, 2, 1]
    assert order(catalog, namespace_ids=[ns_b]) == [2]
    assert order(catalog, namespace_ids=[]) == []


def test_protect_after_spares_recent_access_and_recent_creation(catalog: Catalog) -> None:
    catalog.upsert_blocks(
        [
            row(NS_A, 1, 100.0),
            row(NS_A, 2, 900.0),  # accessed recently
            BlockRow(key(NS_A, 3), 100, 950.0, 100.0),  # created recently (clock skew / scan)
        ]
    )
    assert order(catalog, protect_after=500.0) == [1]


def test_stops_once_limit_bytes_offered(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(NS_A, n, float(n), size=100) for n in range(1, 11)])
    assert order(catalog, limit_bytes=250) == [1, 2, 3]
    assert order(catalog, limit_bytes=300) == [1, 2, 3]
    assert order(catalog, limit_bytes=0) == []


def test_streams_beyond_one_chunk_and_can_be_abandoned(catalog: Catalog, monkeypatch) -> None:
    import kvfs.catalog.streams as streams

    monkeypatch.setattr(streams, "STREAM_CHUNK", 7)
    catalog.upsert_blocks([row(NS_A, n, float(n)) for n in range(1, 51)])
    stream = LruPolicy().candidates(catalog, namespace_ids=None, protect_after=1e12, limit_bytes=1 << 62)
    first = [int(c.key.block_hash, 16) for c in itertools.islice(stream, 20)]
    stream.close()  # releases the connection mid-stream
    assert first == list(range(1, 21))
    assert order(catalog) == list(range(1, 51))
    # The catalog is still writable after an abandoned stream (no lock left behind on SQLite).
    catalog.remove_blocks([key(NS_A, 1)])
    assert catalog.block_count() == 49


def test_registry() -> None:
    assert DEFAULT_POLICY in available_policies()
    assert isinstance(get_policy("lru"), LruPolicy)
    assert POLICIES["lru"] is LruPolicy
    assert get_policy(None).name == DEFAULT_POLICY
    with pytest.raises(UnknownPolicyError, match="unknown eviction policy 'nope'.*lru"):
        get_policy("nope")


def test_a_policy_module_that_fails_to_import_does_not_break_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pkgutil

    import kvfs.policy as registry

    real = pkgutil.iter_modules

    def with_a_broken_one(path):  # type: ignore[no-untyped-def]
        yield from real(path)
        yield pkgutil.ModuleInfo(None, "no_such_policy_module", False)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "BROKEN_MODULES", {})
    monkeypatch.setattr(registry.pkgutil, "iter_modules", with_a_broken_one)
    assert "lru" in registry.available_policies()
    assert "no_such_policy_module" in registry.BROKEN_MODULES
    with pytest.raises(UnknownPolicyError, match="no_such_policy_module failed to import"):
        get_policy("smart")
