"""Planner invariants over random catalogs and limits (hypothesis), checked against a direct computation."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvfs.catalog import BlockRow, Catalog
from kvfs.eviction import EvictReason, Limits, plan_pass
from kvfs.layout import BlockKey

NOW = 10_000.0
NAMESPACES = ["org_a_0123456789ab", "org_b_ba9876543210", "org_c_00000000000c"]

block = st.tuples(
    st.sampled_from(range(len(NAMESPACES))),
    st.integers(min_value=1, max_value=1000),  # size
    st.integers(min_value=0, max_value=7).map(lambda t: t * 1000),  # last access: ties are common
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=-1, max_value=8),  # chain position
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Equally old blocks at the capacity cut: the deeper chain position must go first.
@example(
    blocks=[(0, 10, 1000, 0, 1), (0, 10, 1000, 0, 5)],
    cap=0.5,
    ttl=None,
    min_age=0,
    quota_a=None,
    retire_c=False,
)
@given(
    blocks=st.lists(block, min_size=0, max_size=40),
    cap=st.none() | st.floats(min_value=0.0, max_value=1.0),  # max_bytes as a fraction of usage
    ttl=st.none() | st.integers(min_value=0, max_value=10_000),
    min_age=st.integers(min_value=0, max_value=3_000),
    quota_a=st.none() | st.integers(min_value=0, max_value=5_000),
    retire_c=st.booleans(),
)
def test_plan_invariants(
    blocks: list[tuple[int, int, int, int, int]],
    cap: float | None,
    ttl: int | None,
    min_age: int,
    quota_a: int | None,
    retire_c: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open(f"sqlite:///{Path(tmp) / 'c.db'}")
        try:
            rows = []
            for n, (ns, size, last, age, pos) in enumerate(blocks):
                key = BlockKey(NAMESPACES[ns], 0, 0, f"{n:032x}", "kvfs")
                rows.append(BlockRow(key, size, float(max(0, last - age)), float(last), chain_pos=pos))
            max_bytes = None if cap is None else int(cap * sum(r.size for r in rows))
            for name in NAMESPACES:
                catalog.ensure_namespace(name)
            catalog.upsert_blocks(rows)
            limits = Limits(
                max_bytes=max_bytes,
                ttl=None if ttl is None else float(ttl),
                quotas={} if quota_a is None else {NAMESPACES[0]: quota_a},
                retire=[NAMESPACES[2]] if retire_c else [],
                min_age=float(min_age),
            )
            plan = plan_pass(catalog, limits, now=NOW, policy="lru")
        finally:
            catalog.close()

    by_key = {r.key: r for r in rows}
    protect = NOW - min_age
    chosen = [by_key[v.key] for v in plan.victims]
    # Every victim exists, once, and is never protected by min_age.
    assert len({v.key for v in plan.victims}) == len(plan.victims)
    assert all(r.last_access < protect and r.created < protect for r in chosen)
    assert plan.total_bytes == sum(r.size for r in chosen)
    eligible = [r for r in rows if r.last_access < protect and r.created < protect]
    for victim in plan.victims:
        row = by_key[victim.key]
        if victim.reason is EvictReason.RETIRED:
            assert retire_c and row.key.namespace == NAMESPACES[2]
        if victim.reason is EvictReason.TTL:
            assert ttl is not None and row.last_access < NOW - ttl
    # Retiring takes every eligible block of the namespace; TTL every eligible expired block.
    if retire_c:
        assert {r.key for r in eligible if r.key.namespace == NAMESPACES[2]} <= {r.key for r in chosen}
    if ttl is not None:
        assert {r.key for r in eligible if r.last_access < NOW - ttl} <= {r.key for r in chosen}
    # Quota: namespace A ends within its quota, unless every eligible block of A was taken.
    left_a = sum(r.size for r in rows if r.key.namespace == NAMESPACES[0]) - sum(
        r.size for r in chosen if r.key.namespace == NAMESPACES[0]
    )
    if quota_a is not None and left_a > quota_a:
        assert {r.key for r in eligible if r.key.namespace == NAMESPACES[0]} <= {r.key for r in chosen}
    # Capacity: usage ends within max_bytes unless every eligible block was taken; and capacity victims are
    # the LRU-first blocks among those left: none left behind is older than a capacity victim.
    left = sum(r.size for r in rows) - plan.total_bytes
    if max_bytes is not None and left > max_bytes:
        assert {r.key for r in eligible} <= {r.key for r in chosen}
    capacity = [by_key[v.key] for v in plan.victims if v.reason is EvictReason.CAPACITY]
    if capacity:
        newest_taken = max((r.last_access, -r.chain_pos) for r in capacity)
        spared = [r for r in eligible if r.key not in {c.key for c in chosen}]
        assert all((r.last_access, -r.chain_pos) >= newest_taken for r in spared)
        # And the capacity pass took no more than it needed: without its last victim it would not suffice.
        assert max_bytes is not None
        assert left + capacity[-1].size > max_bytes
