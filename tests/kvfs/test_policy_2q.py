"""The `slru` and `2q` policies on real catalogs (SQLite and PostgreSQL): order, scope, protection, history."""

from __future__ import annotations

import itertools

import pytest

from kvfs.catalog import BlockRow, Catalog, ghosts, testing
from kvfs.eviction import Limits, execute_plan, plan_pass
from kvfs.layout import BlockKey
from kvfs.policy import get_policy
from kvfs.policy.slru import SegmentedLruPolicy
from kvfs.policy.twoq import HORIZON, TwoQueuePolicy

NS = "org_model_0123456789ab"
OTHER = "org_other_0123456789ab"
NEVER_PROTECTED = float("inf")


def key(n: int, ns: str = NS, rank: int | None = None) -> BlockKey:
    return BlockKey(ns, rank, 0, f"{n:016x}{n:016x}", "kvfs")


def num(k: BlockKey) -> int:
    return int(k.block_hash[:16], 16)


def row(n: int, last: float, *, hits: int = 0, pos: int = 0, size: int = 100, ns: str = NS) -> BlockRow:
    return BlockRow(key(n, ns), size, created=min(last, 1.0), last_access=last, chain_pos=pos, hits=hits)


def history_size(catalog: Catalog) -> int:
    return sum(ghosts.ghost_counts(catalog, "2q").values())


def revive(catalog: Catalog, *, horizon: float = HORIZON) -> ghosts.Revived:
    return ghosts.revive(catalog, policy="2q", horizon=horizon)


def order(
    catalog: Catalog,
    policy,
    *,
    limit: int = 1 << 40,
    protect: float = NEVER_PROTECTED,
    ns=None,
    prepare: bool = True,
) -> list[int]:
    """The order a pass plans on (`prepare` first, as the pass does); prepare=False: what `kvfs ls` lists."""
    ids = None if ns is None else [catalog.namespace_id(ns)]
    if prepare:
        policy.prepare(catalog)
    stream = policy.candidates(catalog, namespace_ids=ids, protect_after=protect, limit_bytes=limit)
    return [num(c.key) for c in stream]


def evict(catalog: Catalog, policy, *, limit: int, only: set[int] | None = None) -> list[int]:
    """Offer `limit` bytes and report the offered blocks (or `only` those) as evicted, as the executor does."""
    policy.prepare(catalog)
    cands = list(
        policy.candidates(catalog, namespace_ids=None, protect_after=NEVER_PROTECTED, limit_bytes=limit)
    )
    policy.evicted(catalog, [c for c in cands if only is None or num(c.key) in only])
    return [num(c.key) for c in cands]


def test_probation_surplus_then_lru_then_rest_of_probation(catalog: Catalog) -> None:
    # Blocks 1-6 never reused (probation), 7-9 reused; ages interleaved.
    catalog.upsert_blocks(
        [row(1, 10), row(2, 20), row(3, 30), row(4, 40), row(5, 50), row(6, 60)]
        + [row(7, 5, hits=2), row(8, 15, hits=1), row(9, 25, hits=1)]
    )
    policy = SegmentedLruPolicy(probation_share=0.5)
    # Free 300 of 900 bytes: 600 stay; probation may keep 300 of them, holds 600: its oldest 300 go first.
    assert order(catalog, policy, limit=300) == [1, 2, 3]
    # Free everything: surplus of probation (all of it: nothing stays), then the reused blocks by LRU.
    assert order(catalog, policy) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # Free 500: 400 stay, probation keeps 200 -> 4 probation blocks first, then LRU of the reused ones.
    assert order(catalog, policy, limit=500) == [1, 2, 3, 4, 7]
    # Share 1.0: probation never in surplus; reused blocks go first, then probation.
    assert order(catalog, SegmentedLruPolicy(probation_share=1.0), limit=300) == [7, 8, 9]


def test_ties_evict_deeper_chain_position_first_and_protection_applies(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(1, 10, pos=0), row(2, 10, pos=1), row(3, 10, pos=2), row(4, 50, pos=0)])
    policy = get_policy("slru")
    assert order(catalog, policy) == [3, 2, 1, 4]
    # Blocks used at or after protect_after are never offered.
    assert order(catalog, policy, protect=50) == [3, 2, 1]


def test_namespace_scope(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(1, 10), row(2, 20, ns=OTHER), row(3, 30)])
    assert order(catalog, get_policy("slru"), ns=NS) == [1, 3]
    assert order(catalog, get_policy("2q"), ns=OTHER) == [2]


def test_stream_stops_at_limit_and_closes(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(n, float(n)) for n in range(1, 50)])
    stream = get_policy("2q").candidates(catalog, namespace_ids=None, protect_after=1e9, limit_bytes=1 << 40)
    first = list(itertools.islice(stream, 3))
    stream.close()
    assert [num(c.key) for c in first] == [1, 2, 3]
    # The catalog is still writable (no cursor left holding it).
    catalog.upsert_blocks([row(99, 100.0)])


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="probation share"):
        SegmentedLruPolicy(probation_share=1.5)
    with pytest.raises(ValueError, match="horizon"):
        TwoQueuePolicy(horizon=-1)


def _hits(catalog: Catalog, n: int) -> int:
    return catalog.get_blocks([key(n)])[key(n)].hits


def test_restored_block_skips_probation_across_restarts(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    cat.upsert_blocks([row(1, 10), row(2, 20), row(3, 30)])
    # A capacity pass offers 1, 2, 3 and deletes block 1: it becomes a ghost...
    assert evict(cat, get_policy("2q"), limit=250, only={1}) == [1, 2, 3]
    cat.remove_blocks([key(1)])
    cat.close()

    # ...the evictor restarts (new process: new catalog object, new policy instance)...
    cat = Catalog.open(catalog_url)
    cat.upsert_blocks(
        [BlockRow(key(1), 100, created=40.0, last_access=40.0)]
    )  # ...and block 1 is stored again
    cat.upsert_blocks([BlockRow(key(4), 100, created=41.0, last_access=41.0)])  # a new block, never seen
    policy = TwoQueuePolicy(probation_share=0.0)
    # Block 1 counts as reused (hits 1): it goes after every never-reused block, 4 included.
    assert order(cat, policy) == [2, 3, 4, 1]
    assert _hits(cat, 1) == 1 and _hits(cat, 4) == 0
    # Idempotent: another pass neither counts the re-store again nor changes the order.
    assert order(cat, policy) == [2, 3, 4, 1]
    assert _hits(cat, 1) == 1
    cat.close()


def test_only_a_later_incarnation_of_an_offered_block_is_a_restore(catalog: Catalog) -> None:
    catalog.upsert_blocks([BlockRow(key(1, rank=0), 100, 10.0, 10.0), BlockRow(key(2), 100, 10.0, 12.0)])
    # Both reported evicted while their rows stay (a row re-stored at once): ghosts of blocks still present.
    assert evict(catalog, get_policy("2q"), limit=150) == [1, 2]
    assert history_size(catalog) == 2
    # Rank 1 of block 1 is stored for the first time: another key, not a re-store.
    catalog.upsert_blocks([BlockRow(key(1, rank=1), 100, 11.0, 11.0)])
    assert revive(catalog).revived == 0
    assert catalog.get_blocks([key(1, rank=1)])[key(1, rank=1)].hits == 0
    # The blocks that were offered and stayed are not re-stores either, even when used again.
    catalog.apply_journal([], {})
    assert _hits(catalog, 2) == 0
    # Block 2 really evicted, then stored again after its last access: a re-store.
    catalog.remove_blocks([key(2)])
    catalog.upsert_blocks([BlockRow(key(2), 100, 20.0, 20.0)])
    assert revive(catalog).revived == 1 and _hits(catalog, 2) == 1


def test_ghosts_are_pruned_beyond_the_horizon(catalog: Catalog) -> None:
    catalog.upsert_blocks([row(n, float(n)) for n in range(1, 11)])  # recency span 1..10
    assert len(evict(catalog, get_policy("2q"), limit=950)) == 10  # 10 ghosts, last seen 1..10
    assert history_size(catalog) == 10
    catalog.remove_blocks([key(n) for n in range(1, 10)])
    catalog.upsert_blocks([row(11, 20.0)])
    # The tier now spans 10..20 (10 s).  Horizon 3: ghosts back to 20 - 30 are kept: all of them.
    assert revive(catalog, horizon=3.0).ghosts_dropped == 0
    assert history_size(catalog) == 10
    # Horizon 1: ghosts last seen before 20 - 10 go (blocks 1-9); block 10's ghost (last seen 10) stays.
    assert revive(catalog, horizon=1.0).ghosts_dropped == 9
    left = testing.scalar(catalog, "SELECT count(*) FROM policy_ghosts WHERE last_seen < 10")
    assert left == 0 and history_size(catalog) == 1


def test_remember_ignores_unknown_namespaces_and_keeps_the_latest_access(catalog: Catalog) -> None:
    from kvfs.catalog import Candidate

    catalog.upsert_blocks([row(1, 5.0)])
    cands = [
        Candidate(1, key(1), 100, 5.0),
        Candidate(1, key(1), 100, 7.0),
        Candidate(9, key(9, ns=OTHER), 1, 1.0),
    ]
    evicted = [(c.key, c.last_access, False) for c in cands]
    assert ghosts.remember(catalog, "2q", evicted, keep_newest=True) == 1
    assert testing.scalar(catalog, "SELECT last_seen FROM policy_ghosts") == 7.0
    # A later eviction record of an older access keeps the newer one (a ghost's age only grows forward).
    assert ghosts.remember(catalog, "2q", [(key(1), 6.0, False)], keep_newest=True) == 1
    assert testing.scalar(catalog, "SELECT last_seen FROM policy_ghosts") == 7.0


def test_plan_pass_with_2q_frees_enough_and_prefers_one_off_blocks(catalog: Catalog) -> None:
    # 10 reused blocks (old), 10 never reused (newer): a 50% cut takes the one-off blocks first.
    catalog.upsert_blocks([row(n, float(n), hits=3) for n in range(1, 11)])
    catalog.upsert_blocks([row(n, float(n)) for n in range(11, 21)])
    plan = plan_pass(catalog, Limits(max_bytes=1000), now=1000.0, policy="2q")
    assert plan.total_bytes == 1000 and plan.policy == "2q"
    chosen = sorted(num(v.key) for v in plan.victims)
    # Probation may keep 10% of the 1000 bytes that stay: 9 one-off blocks go, then the LRU reused block.
    assert chosen == [1, *range(11, 20)]
    lru = plan_pass(catalog, Limits(max_bytes=1000), now=1000.0, policy="lru")
    assert sorted(num(v.key) for v in lru.victims) == list(range(1, 11))


def test_bookkeeping_failure_is_counted_and_the_pass_goes_on(catalog: Catalog) -> None:
    from kvfs import metrics

    catalog.upsert_blocks([row(1, 10), row(2, 20)])
    assert order(catalog, get_policy("2q"), limit=150) == [1, 2]  # its state exists now
    testing.execute(catalog, "DROP TABLE policy_ghosts")
    before = {
        op: metrics.POLICY_BOOKKEEPING_ERRORS.labels(op=op)._value.get() for op in ("revive", "remember")
    }
    assert evict(catalog, get_policy("2q"), limit=150) == [1, 2]
    for op in ("revive", "remember"):
        assert metrics.POLICY_BOOKKEEPING_ERRORS.labels(op=op)._value.get() == before[op] + 1


def test_restores_are_counted(catalog: Catalog) -> None:
    from kvfs import metrics

    catalog.upsert_blocks([row(1, 10)])
    evict(catalog, get_policy("2q"), limit=50)
    catalog.remove_blocks([key(1)])
    catalog.upsert_blocks([BlockRow(key(1), 100, created=30.0, last_access=30.0)])
    before = metrics.POLICY_RESTORES._value.get()
    order(catalog, get_policy("2q"))
    assert metrics.POLICY_RESTORES._value.get() == before + 1


def test_ghosts_come_from_deletions_not_from_ordering_or_dry_runs(catalog: Catalog, tmp_path) -> None:
    # Ordering alone (`kvfs ls`, planning) records nothing; only blocks the executor deleted for capacity do.
    catalog.upsert_blocks([row(n, float(n)) for n in range(1, 6)])
    assert order(catalog, get_policy("2q"), prepare=False) == [1, 2, 3, 4, 5]
    assert order(catalog, get_policy("2q"), limit=100) == [1]
    assert history_size(catalog) == 0
    for n in range(1, 6):
        path = tmp_path / key(n).relpath()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    plan = plan_pass(catalog, Limits(max_bytes=300), now=1000.0, policy="2q")
    assert sorted(num(v.key) for v in plan.victims) == [1, 2]
    execute_plan(tmp_path, catalog, plan, dry_run=True, policy="2q")
    assert history_size(catalog) == 0
    result = execute_plan(tmp_path, catalog, plan, dry_run=False, policy="2q")
    assert result.deleted_files == 2 and history_size(catalog) == 2
    # TTL victims are not ghosts: nothing of them is kept to come back to.
    ttl = plan_pass(catalog, Limits(ttl=1.0), now=1000.0, policy="2q")
    execute_plan(tmp_path, catalog, ttl, dry_run=False, policy="2q")
    assert history_size(catalog) == 2 and catalog.block_count() == 0
