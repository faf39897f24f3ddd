"""The `s3fifo` policy on real catalogs (SQLite and PostgreSQL): its order, the prefix rules, and its writes
committed only with a pass's deletions (never by a dry run or a listing)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kvfs.catalog import Catalog, testing
from kvfs.cli import main as kvfs_cli
from kvfs.eviction import Limits, execute_plan, plan_pass
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy import available_policies, get_policy
from kvfs.policy.s3fifo import ghost_limit

NS = "org_model_0123456789ab"
OTHER = "org_other_0123456789ab"


def key(n: int, ns: str = NS) -> BlockKey:
    return BlockKey(ns, None, 0, f"{n:016x}{n:016x}", "kvfs")


def num(k: BlockKey) -> int:
    return int(k.block_hash[:16], 16)


def store(n: int, t: float, pos: int = 0, parent: int | None = None, ns: str = NS) -> JournalRecord:
    return JournalRecord(
        RecordKind.STORE, key(n, ns), t, 100, pos, None if parent is None else f"{parent:016x}" * 2
    )


def access(n: int, t: float, ns: str = NS) -> JournalRecord:
    return JournalRecord(RecordKind.ACCESS, key(n, ns), t)


def fifo_state(catalog: Catalog) -> list[tuple[int, ...]]:
    with testing.connection(catalog) as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT block_hash, fifo_queue, fifo_seq, fifo_freq FROM blocks")).all()
    return sorted((int(r[0][:16], 16), *r[1:]) for r in rows)


def order(catalog: Catalog, limit: int, protect: float = 1e9) -> list[int]:
    policy = get_policy("s3fifo")
    return [
        num(c.key)
        for c in policy.candidates(catalog, namespace_ids=None, protect_after=protect, limit_bytes=limit)
    ]


@pytest.fixture
def catalog(catalog_url: str):
    with Catalog.open(catalog_url) as cat:
        yield cat


def test_registered_and_selectable() -> None:
    assert "s3fifo" in available_policies()
    assert get_policy("s3fifo").name == "s3fifo"


def test_ghost_bound_is_the_main_queue_share_of_what_stays() -> None:
    assert ghost_limit(100, 100, 50) == 45  # 50 stay, 5 of them small
    assert ghost_limit(100, 10_000, 5_000) == 45  # bytes: counted at the mean size
    assert ghost_limit(0, 0, 0) == 1


def test_order_sweeps_small_then_main_and_a_listing_writes_nothing(catalog: Catalog) -> None:
    # 1..10 stored one per tick; 2 and 3 read (counter 1).
    catalog.apply_journal([store(n, float(n)) for n in range(1, 11)], {})
    catalog.apply_journal([access(2, 20.0), access(3, 20.0)], {})
    before = fifo_state(catalog)
    # 500 bytes of 1000 go: small's target is 50 bytes, so the sweep drains small, promoting 2 and 3.
    assert order(catalog, 500) == [1, 4, 5, 6, 7]
    assert fifo_state(catalog) == before  # `kvfs ls` lists candidates: nothing changes


def test_orphans_and_superseded_leaves_go_first_and_the_request_in_flight_stays(catalog: Catalog) -> None:
    # A chain 1 <- 2 <- 3, then 4 a newer child of 2 supersedes 3 (never read, a leaf).
    catalog.apply_journal([store(1, 1.0, 0), store(2, 1.0, 1, 1), store(3, 1.0, 2, 2)], {})
    catalog.apply_journal([store(4, 2.0, 2, 2), store(5, 3.0), store(6, 9.0)], {})
    assert order(catalog, 200, protect=9.0)[:1] == [3]
    # Evicting 1 orphans its descendants 2, 3, 4: they go first, oldest first, the deeper position on ties.
    catalog.remove_blocks([key(1)])
    assert order(catalog, 600, protect=9.0) == [3, 2, 4, 5]  # 6 is the request in flight: never offered


def test_a_pass_commits_its_moves_and_ghosts_a_dry_run_none(catalog: Catalog, tmp_path) -> None:
    catalog.apply_journal([store(n, float(n)) for n in range(1, 11)], {})
    catalog.apply_journal([access(2, 20.0), access(3, 20.0)], {})
    before = fifo_state(catalog)
    limits = Limits(max_bytes=500, min_age=0.0)
    policy = get_policy("s3fifo")
    plan = plan_pass(catalog, limits, now=30.0, policy=policy)
    assert sorted(num(v.key) for v in plan.victims) == [1, 4, 5, 6, 7]
    assert plan.writes is not None and len(plan.writes.moves) == 2
    execute_plan(tmp_path, catalog, plan, dry_run=True, policy=policy)
    assert fifo_state(catalog) == before and catalog.fifo_ghost_keys() == []
    assert policy.take_pass_writes() is None  # handed over once
    plan = plan_pass(catalog, limits, now=30.0, policy=policy)
    execute_plan(tmp_path, catalog, plan, dry_run=False, policy=policy, remover=_Gone())
    state = {r[0]: r[1:] for r in fifo_state(catalog)}
    assert set(state) == {2, 3, 8, 9, 10}
    assert state[2][0] == state[3][0] == 1 and state[2][2] == state[3][2] == 0  # promoted, counter cleared
    # Small-queue victims, oldest first, trimmed to the bound: (500 - 50) bytes stay in main, 4 rows of 100.
    assert [int(g[3], 16) for g in catalog.fifo_ghost_keys()] == [4, 5, 6, 7]
    # A ghost stored again enters main.
    catalog.apply_journal([store(4, 40.0)], {})
    assert {r[0]: r[1] for r in fifo_state(catalog)}[4] == 1


def test_quota_then_capacity_in_one_pass_reads_the_moves_already_made(catalog: Catalog, tmp_path) -> None:
    # Two namespaces: a quota sweep on one promotes a used block; the capacity sweep after it, in the same pass,
    # must not promote it again (nor lose it).
    catalog.apply_journal([store(n, float(n), ns=NS) for n in range(1, 6)], {})
    catalog.apply_journal([store(n, float(n), ns=OTHER) for n in range(11, 16)], {})
    catalog.apply_journal([access(1, 20.0, ns=NS)], {})
    limits = Limits(max_bytes=600, min_age=0.0, quotas={NS: 300})
    policy = get_policy("s3fifo")
    plan = plan_pass(catalog, limits, now=30.0, policy=policy)
    assert plan.total_bytes == 400
    assert plan.writes is not None and [m[1] for m in plan.writes.moves] == [-1]
    execute_plan(tmp_path, catalog, plan, dry_run=False, policy=policy, remover=_Gone())
    assert catalog.block_count() == 6 and catalog.get_blocks([key(1)])


def test_cli_gc_takes_the_policy(tmp_path) -> None:
    out = CliRunner().invoke(kvfs_cli, ["gc", "--help"])
    assert out.exit_code == 0 and "s3fifo" in out.output


class _Gone:
    """Every path counts as removed (a tier of rows without files)."""

    def unlink_many(self, relpaths):  # type: ignore[no-untyped-def]
        from kvfs.eviction.execute import CatalogOnly

        return CatalogOnly().unlink_many(relpaths)
