"""The `prefix` policy (the default) on real catalogs (SQLite and PostgreSQL): order, adaptive bonus, state."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvfs import metrics
from kvfs.catalog import BlockRow, Catalog, ghosts, testing
from kvfs.eviction import Limits, plan_pass
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY, get_policy, prefix
from kvfs.policy.prefix import PrefixPolicy, adapt, order

NS = "org_model_0123456789ab"
NEVER_PROTECTED = float("inf")


def key(n: int) -> BlockKey:
    return BlockKey(NS, None, 0, f"{n:016x}{n:016x}", "kvfs")


def num(k: BlockKey) -> int:
    return int(k.block_hash[:16], 16)


def row(n: int, last: float, *, hits: int = 0, pos: int = 0, created: float | None = None) -> BlockRow:
    return BlockRow(
        key(n),
        100,
        created=min(last, 1.0) if created is None else created,
        last_access=last,
        chain_pos=pos,
        hits=hits,
    )


def store(n: int, t: float, pos: int, parent: int | None) -> JournalRecord:
    """A connector's STORE record of block n at chain position `pos` behind block `parent`."""
    return JournalRecord(
        RecordKind.STORE, key(n), t, 100, pos, None if parent is None else key(parent).block_hash
    )


def ghost_count(catalog: Catalog) -> dict[bool, int]:
    return ghosts.ghost_counts(catalog, "prefix")


def offered(catalog: Catalog, policy: PrefixPolicy, limit: int = 1 << 40) -> list[int]:
    """What a pass offers: `prepare` (settles the bonus), then the order."""
    scope = [catalog.namespace_id(NS) or 0]
    policy.prepare(catalog)
    stream = policy.candidates(catalog, namespace_ids=scope, protect_after=NEVER_PROTECTED, limit_bytes=limit)
    return [num(c.key) for c in stream]


def evict(catalog: Catalog, policy: PrefixPolicy, limit: int) -> list[int]:
    """Offer `limit` bytes, delete the offered rows and tell the policy, as execute_plan does."""
    scope = [catalog.namespace_id(NS) or 0]
    policy.prepare(catalog)
    cands = list(
        policy.candidates(catalog, namespace_ids=scope, protect_after=NEVER_PROTECTED, limit_bytes=limit)
    )
    catalog.remove_block_ids([c.block_id for c in cands])
    policy.evicted(catalog, cands)
    return [num(c.key) for c in cands]


def test_prefix_is_selectable_by_name_and_no_longer_the_default() -> None:
    assert isinstance(get_policy("prefix"), PrefixPolicy) and DEFAULT_POLICY != "prefix"


def test_a_chain_loses_its_tail_before_its_head(catalog: Catalog) -> None:
    # One request stored the chain 1-2-3 (same last access); a newer request used 4.  The tail goes first, the
    # head last, and a reused head outlives its never-reused tail even when it is older.
    catalog.upsert_blocks([row(1, 10, pos=0), row(2, 10, pos=1), row(3, 10, pos=2), row(4, 50, pos=0)])
    assert offered(catalog, PrefixPolicy()) == [3, 2, 1, 4]
    assert offered(catalog, PrefixPolicy(), limit=100) == [3]


def test_blocks_whose_prefix_is_gone_go_first(catalog: Catalog) -> None:
    # The chain 1-2-3 was stored with its parents recorded; 4 is older but whole.  Block 1 is deleted (a TTL,
    # a corrupt file, another tool): 2 and 3 can never be loaded, so they go before 4, the tail first.
    catalog.apply_journal(
        [store(4, 5.0, 0, None), store(1, 10.0, 0, None), store(2, 10.0, 1, 1), store(3, 10.0, 2, 2)], {}
    )
    assert offered(catalog, PrefixPolicy()) == [4, 3, 2, 1]  # LRU while the chain is whole
    catalog.remove_blocks([key(1)])
    assert offered(catalog, PrefixPolicy()) == [3, 2, 4]
    assert offered(catalog, PrefixPolicy(), limit=200) == [3, 2]
    # Orphans leave no ghosts: their coming back says nothing about the bonus.
    policy = PrefixPolicy()
    evict(catalog, policy, limit=200)
    assert ghost_count(catalog) == {}


def test_the_last_block_a_conversation_left_behind_goes_right_after_orphans(catalog: Catalog) -> None:
    # Turn 1 sent 1-2-3 (3: its partial last block); 9 is an older, unrelated chain.  Turn 2 re-sends 1-2 and
    # stores 4 (the full block that replaces 3) and 5: 3 is never-read, childless, and its parent has a newer
    # child, so it goes before 9, although 9 is older.
    catalog.apply_journal(
        [store(9, 5.0, 0, None), store(1, 10.0, 0, None), store(2, 10.0, 1, 1), store(3, 10.0, 2, 2)], {}
    )
    assert offered(catalog, PrefixPolicy()) == [9, 3, 2, 1]  # LRU so far
    turn2 = [JournalRecord(RecordKind.ACCESS, key(n), 20.0) for n in (1, 2)]
    catalog.apply_journal([*turn2, store(4, 20.0, 2, 2), store(5, 20.0, 3, 4)], {})
    assert offered(catalog, PrefixPolicy()) == [3, 9, 5, 4, 2, 1]
    # It leaves no ghost (its return would say nothing about the bonus).
    policy = PrefixPolicy()
    assert evict(catalog, policy, limit=100) == [3]
    assert ghost_count(catalog) == {}


def test_order_merges_by_last_access_plus_bonus() -> None:
    @dataclass
    class B:
        name: str
        last_access: float
        chain_pos: int = 0

    fresh = [B("a", 10), B("b", 20, 1), B("b0", 20, 0)]
    reused = [B("c", 5, 2), B("d", 12)]
    # Bonus 0: plain LRU with the deeper position first on ties.
    assert [(b.name, r) for b, r in order([], [], fresh, reused, 0.0)] == [
        ("c", True),
        ("a", False),
        ("d", True),
        ("b", False),
        ("b0", False),
    ]
    # Bonus 10: c counts as 15, d as 22; on a tie the never-reused block goes first.
    assert [b.name for b, _ in order([], [], fresh, reused, 10.0)] == ["a", "c", "b", "b0", "d"]
    assert [b.name for b, _ in order([], [], fresh, [B("e", 10)], 0.0)] == ["a", "e", "b", "b0"]
    # Orphans first, then superseded leaves, whatever their age.
    assert [(b.name, r) for b, r in order([B("z", 99)], [B("s", 98)], fresh[:1], reused[:1], 0.0)] == [
        ("z", None),
        ("s", None),
        ("c", True),
        ("a", False),
    ]


def test_adapt_steps_toward_the_class_whose_evictions_came_back() -> None:
    step = prefix.BETA_STEP
    assert adapt(0, 1, 10, 10, 0.1) == pytest.approx(0.1 + step)
    assert adapt(1, 0, 10, 10, 0.1) == pytest.approx(0.1 - step)
    # Weighted by the other class's ghosts: a reused ghost's return among many fresh ghosts counts more.
    assert adapt(0, 1, 40, 10, 0.1) == pytest.approx(0.1 + 4 * step)
    assert adapt(1, 0, 10, 40, 0.1) == pytest.approx(0.1 - 4 * step)
    assert adapt(0, 0, 5, 5, 0.2) == 0.2
    assert adapt(50, 0, 1, 1, 0.1) == 0.0  # clamped
    assert adapt(0, 500, 1, 1, 0.1) == prefix.BETA_MAX


def test_returning_reused_blocks_raise_the_bonus_and_it_survives_a_reopen(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    restores = metrics.POLICY_RESTORES._value.get()
    try:
        cat.upsert_blocks([row(n, 10 + n, hits=1, pos=0) for n in range(1, 6)] + [row(9, 100)])
        # An old block of another namespace (out of scope) keeps the recency span wide: no ghost expires here.
        other = BlockKey("org_other_0123456789ab", None, 0, "f" * 32, "kvfs")
        cat.upsert_blocks([BlockRow(other, 100, created=0.0, last_access=0.0)])
        policy = PrefixPolicy()
        assert evict(cat, policy, limit=300) == [1, 2, 3]  # LRU while the bonus is 0
        assert ghost_count(cat) == {True: 3}
        # 1 and 2 are stored again after their eviction: the bonus should have kept them.
        cat.upsert_blocks([row(1, 200, created=200), row(2, 201, created=201)])
        assert offered(cat, policy, limit=100) == [4]
        assert policy.beta == pytest.approx(adapt(0, 2, 0, 1, 0.0)) and policy.beta > 0
        assert ghost_count(cat) == {True: 1}  # the returned ghosts are spent
        assert metrics.POLICY_RESTORES._value.get() == restores + 2
    finally:
        cat.close()
    # A restarted evictor (new process, new policy object) continues from the stored bonus.
    again = Catalog.open(catalog_url)
    try:
        beta, _span = ghosts.bonus(again, policy="prefix", default_beta=0.0)
        assert beta == pytest.approx(adapt(0, 2, 0, 1, 0.0))
        fresh_policy = PrefixPolicy()
        offered(again, fresh_policy, limit=100)
        assert fresh_policy.beta == pytest.approx(adapt(0, 2, 0, 1, 0.0))
    finally:
        again.close()


def test_returning_fresh_blocks_lower_the_bonus(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(1, 10), row(2, 11), row(3, 50, hits=3)])
    policy = PrefixPolicy()
    assert evict(catalog, policy, limit=200) == [1, 2]
    # Two reused blocks returning first lift the bonus, then a never-reused one coming back lowers it.
    # A block of another namespace (out of scope) keeps the recency span wide, so no ghost is older than
    # the horizon (one span) until the end of this test.
    other = BlockKey("org_other_0123456789ab", None, 0, "f" * 32, "kvfs")
    catalog.upsert_blocks([BlockRow(other, 100, created=0.0, last_access=0.0)])
    catalog.upsert_blocks([row(7, 60, hits=1), row(8, 1000, hits=1)])
    assert evict(catalog, policy, limit=200) == [3, 7]
    catalog.upsert_blocks([row(3, 1010, created=1010), row(7, 1011, created=1011)])
    offered(catalog, policy, limit=100)
    high = policy.beta
    assert high > 0
    catalog.upsert_blocks([row(1, 1020, created=1020)])
    offered(catalog, policy, limit=100)
    assert policy.beta < high
    # Ghosts older than the horizon (one recency span before the newest access) are dropped: 2's.
    catalog.remove_blocks([other, key(1), key(3), key(7), key(8)])
    catalog.upsert_blocks([row(9, 100_000, hits=1)])
    offered(catalog, policy, limit=100)
    assert ghost_count(catalog) == {}


def test_plan_pass_uses_it_and_bookkeeping_failures_fall_back_to_lru(sqlite_url: str) -> None:
    cat = Catalog.open(sqlite_url)
    try:
        # A broken ghost store (its table gone): settling fails; the pass orders by the stored bonus (none: 0).
        testing.execute(cat, "DROP TABLE policy_ghosts")
        cat.upsert_blocks([row(1, 10, pos=0), row(2, 10, pos=1), row(3, 5, hits=4)])
        errors = metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="settle")._value.get()
        plan = plan_pass(cat, Limits(max_bytes=100), now=1000.0, policy=get_policy("prefix"))
        assert plan.policy == "prefix" and [num(v.key) for v in plan.victims] == [3, 2]
        assert metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="settle")._value.get() == errors + 1
    finally:
        cat.close()
