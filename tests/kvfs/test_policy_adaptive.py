"""The `adaptive` policy on real catalogs (SQLite and PostgreSQL): its orders, its ghosts and FIFO ghosts kept
whatever order runs, its state row across reopens and `kvfs gc`, the v8 -> v9 upgrade, and its failure paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import Catalog, ghosts, streams, testing
from kvfs.cli import main as kvfs_cli
from kvfs.eviction import Limits, execute_plan, plan_pass, run_pass
from kvfs.eviction.execute import CatalogOnly
from kvfs.journal import END_RECORD, JournalRecord, RecordKind, encode_record, segment_name
from kvfs.layout import (
    BlockKey,
    fingerprint_sha256,
    journal_dir,
    kvfs_fields,
    namespace_name,
    write_namespace_config,
)
from kvfs.policy import DEFAULT_POLICY, available_policies, get_policy
from kvfs.policy.adaptive import AdaptivePolicy
from kvfs.replay.chooser import CANDIDATES, FIFO, PREFIX, SHARES

NS = "org_model_0123456789ab"


def key(n: int, ns: str = NS) -> BlockKey:
    return BlockKey(ns, None, 0, f"{n:016x}{n:016x}", "kvfs")


def num(k: BlockKey) -> int:
    return int(k.block_hash[:16], 16)


def store(n: int, t: float, pos: int = 0, parent: int | None = None) -> JournalRecord:
    return JournalRecord(
        RecordKind.STORE, key(n), t, 100, pos, None if parent is None else f"{parent:016x}" * 2
    )


def access(n: int, t: float, pos: int = 0) -> JournalRecord:
    return JournalRecord(RecordKind.ACCESS, key(n), t, 0, pos)


def with_choice(catalog: Catalog, choice: str, blocks: int = 0) -> None:
    """Store a state row whose chooser has settled on `choice`."""
    ghosts.settle_classes(
        catalog, policy="adaptive", horizon=3.0, adapt=lambda r, g, b, e: (b, e or "{}"), initial_beta=0.0
    )
    scores = [0.0] * len(CANDIDATES)
    scores[CANDIDATES.index(choice)] = 10.0
    state = {"p": 0.1, "q": 0.5, "scores": scores, "current": CANDIDATES.index(choice), "blocks": blocks}
    ghosts.save_extra(catalog, "adaptive", json.dumps(state))


def stored_state(catalog: Catalog) -> dict[str, object]:
    _beta, extra, _span = ghosts.load(catalog, policy="adaptive")
    assert extra is not None
    return dict(json.loads(extra))


def order(policy: AdaptivePolicy, catalog: Catalog, limit: int, protect: float = 1e9) -> list[int]:
    return [
        num(c.key)
        for c in policy.candidates(catalog, namespace_ids=None, protect_after=protect, limit_bytes=limit)
    ]


@pytest.fixture
def catalog(catalog_url: str):
    with Catalog.open(catalog_url) as cat:
        yield cat


def test_only_a_policy_of_several_orders_names_its_current_one() -> None:
    assert get_policy("adaptive").current_order() in CANDIDATES
    assert {get_policy(name).current_order() for name in ("lru", "prefix", "2q", "s3fifo")} == {None}


def test_registered_and_selectable() -> None:
    assert "adaptive" in available_policies()
    assert isinstance(get_policy("adaptive"), AdaptivePolicy)
    out = CliRunner().invoke(kvfs_cli, ["gc", "--help"])
    assert out.exit_code == 0 and "adaptive" in out.output


def test_each_order_from_the_catalog_streams(catalog: Catalog) -> None:
    # 1..6 stored one per tick; 2 read once, 3 read twice.
    catalog.apply_journal([store(n, float(n)) for n in range(1, 7)], {})
    catalog.apply_journal([access(2, 10.0), access(3, 10.0), access(3, 11.0)], {})
    before = testing.dump(catalog)
    # The two shares (p = 0.1, q = 0.5 of the 200 bytes that stay): FRESH beyond 20 bytes first, oldest first.
    with_choice(catalog, SHARES)
    assert order(AdaptivePolicy(), catalog, 400) == [1, 4, 5, 6]
    # `prefix` (beta 0: LRU): the oldest first, whatever the class.
    with_choice(catalog, PREFIX)
    assert order(AdaptivePolicy(), catalog, 400) == [1, 4, 5, 6]
    assert order(AdaptivePolicy(), catalog, 600) == [1, 4, 5, 6, 2, 3]
    # S3-FIFO's sweep: the small queue holds everything; the read rows go to main, the rest are victims.
    with_choice(catalog, FIFO)
    assert order(AdaptivePolicy(), catalog, 400) == [1, 4, 5, 6]
    with_choice(catalog, SHARES)
    assert testing.dump(catalog)["blocks"] == before["blocks"]  # a listing writes no row


def test_fifo_ghosts_and_class_ghosts_are_kept_while_another_order_runs(
    catalog: Catalog, tmp_path: Path
) -> None:
    catalog.apply_journal([store(n, float(n)) for n in range(1, 11)], {})
    catalog.apply_journal([access(9, 20.0), access(10, 20.0), access(10, 21.0)], {})
    policy = AdaptivePolicy()
    policy.prepare(catalog)
    assert policy.choice == SHARES  # no evidence yet: the first candidate
    plan = plan_pass(catalog, Limits(max_bytes=500, min_age=0.0), now=30.0, policy=policy)
    assert sorted(num(v.key) for v in plan.victims) == [1, 2, 3, 4, 5]
    # No sweep ran, yet the plan carries the FIFO ghosts' bound: the victims were in the small queue.
    assert plan.writes is not None and plan.writes.moves == [] and plan.writes.ghost_limit == 4
    execute_plan(tmp_path, catalog, plan, dry_run=False, policy=policy, remover=CatalogOnly())
    assert [int(g[3], 16) for g in catalog.fifo_ghost_keys()] == [2, 3, 4, 5]  # trimmed to the bound
    assert ghosts.ghost_counts(catalog, "adaptive") == {False: 5}  # FRESH class ghosts
    # A FIFO ghost stored again enters main; a class ghost stored again is counted and read once.
    catalog.apply_journal([store(3, 40.0)], {})
    policy.prepare(catalog)
    assert policy.shares.fresh_share > 0.1  # a FRESH ghost came back: FRESH gets a larger share
    with testing.connection(catalog) as conn:
        hits, queue = conn.execute(
            text("SELECT hits, fifo_queue FROM blocks WHERE block_hash = :h"), {"h": key(3).block_hash}
        ).one()
    assert (hits, queue) == (1, 1)


def test_the_fifo_order_commits_its_moves_only_with_a_pass(catalog: Catalog, tmp_path: Path) -> None:
    catalog.apply_journal([store(n, float(n)) for n in range(1, 11)], {})
    catalog.apply_journal([access(2, 20.0), access(3, 20.0)], {})
    with_choice(catalog, FIFO)
    policy = AdaptivePolicy()
    plan = plan_pass(catalog, Limits(max_bytes=500, min_age=0.0), now=30.0, policy=policy)
    assert sorted(num(v.key) for v in plan.victims) == [1, 4, 5, 6, 7]
    assert plan.writes is not None and len(plan.writes.moves) == 2
    before = testing.dump(catalog)["blocks"]
    execute_plan(tmp_path, catalog, plan, dry_run=True, policy=policy)
    assert testing.dump(catalog)["blocks"] == before
    plan = plan_pass(catalog, Limits(max_bytes=500, min_age=0.0), now=30.0, policy=policy)
    execute_plan(tmp_path, catalog, plan, dry_run=False, policy=policy, remover=CatalogOnly())
    with testing.connection(catalog) as conn:
        main = conn.execute(text("SELECT block_hash FROM blocks WHERE fifo_queue = 1")).all()
    assert sorted(int(r[0][:16], 16) for r in main) == [2, 3]


def _serve(catalog: Catalog, policy: AdaptivePolicy, requests: list[list[int]], start: int) -> None:
    """Requests journaled one tick apart, each followed by a pass that keeps 20 blocks (as the catalog replay)."""
    present = {num(r.key) for r in catalog.iter_blocks()}
    policy.attach(catalog)
    for i, req in enumerate(requests, start):
        records = []
        for pos, n in enumerate(req):
            if n in present:
                records.append(access(n, float(i), pos))
            else:
                records.append(store(n, float(i), pos, req[pos - 1] if pos else None))
                present.add(n)
        catalog.apply_journal(records, {})
        outcome = run_pass(
            catalog,
            "",
            Limits(max_bytes=20 * 100, min_age=0.0),
            policy,
            now=float(i),
            remover=CatalogOnly(),
            batch_size=1 << 20,
            log_evictions=False,
        )
        present -= {num(v.key) for v in outcome.plan.victims}


def _traffic(n: int, seed: int = 0) -> list[list[int]]:
    # A hot chain read again and again among one-off chains.
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append([1, 2, 3] if rng.random() < 0.4 else [1000 + 3 * i, 1001 + 3 * i, 1002 + 3 * i])
    return out


def test_state_row_continues_across_a_reopen(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as catalog:
        policy = AdaptivePolicy()
        _serve(catalog, policy, _traffic(120), 1)
        state = stored_state(catalog)
        assert state["blocks"] == 20 and state["order"] == policy.choice
        assert sum(policy.shadows.scores.hits) > 0 and list(policy.shadows.scores.hits) == state["scores"]
        beta, p, q = policy.beta, policy.shares.fresh_share, policy.shares.once_share
    with Catalog.open(catalog_url) as catalog:
        again = AdaptivePolicy()
        again.prepare(catalog)  # no journal since: the stored choice, shares and bonus
        assert again.choice == state["order"] and list(again.shadows.scores.hits) == state["scores"]
        assert (again.beta, again.shares.fresh_share, again.shares.once_share) == (beta, p, q)
        assert again.shadows.blocks == 20  # the shadows exist, empty, sized from the stored tier
        assert all(not tier.blocks for tier in again.shadows.tiers)
        _serve(catalog, again, _traffic(30, seed=1), 200)  # and learn again from the journal
        assert stored_state(catalog)["scores"] != state["scores"]


def test_an_unreadable_state_row_starts_afresh(catalog: Catalog, tmp_path: Path, caplog) -> None:
    catalog.apply_journal([store(n, float(n)) for n in range(1, 11)], {})
    with_choice(catalog, FIFO)
    ghosts.save_extra(catalog, "adaptive", "{not json")
    policy = AdaptivePolicy()
    policy.prepare(catalog)
    assert policy.choice == SHARES and "unreadable" in caplog.text
    plan = plan_pass(catalog, Limits(max_bytes=500, min_age=0.0), now=30.0, policy=policy)
    execute_plan(tmp_path, catalog, plan, dry_run=False, policy=policy, remover=CatalogOnly())
    assert stored_state(catalog)["order"] == SHARES  # written whole again after the pass


def test_a_failing_journal_listener_does_not_fail_ingest(catalog: Catalog) -> None:
    seen: list[int] = []

    def broken(records: object) -> None:
        raise RuntimeError("listener bug")

    catalog.add_journal_listener(broken)
    catalog.add_journal_listener(lambda records: seen.append(len(records)))  # type: ignore[arg-type]
    catalog.add_journal_listener(broken)  # once only
    catalog.apply_journal([store(1, 1.0), store(2, 1.0, 1, 1)], {})
    assert seen == [2] and catalog.block_count() == 2
    catalog.remove_journal_listener(broken)
    catalog.apply_journal([access(1, 2.0)], {})
    assert seen == [2, 1]


def test_class_bytes_sums_each_live_class_from_its_covering_index(catalog: Catalog) -> None:
    other = "org_other_0123456789ab"
    catalog.apply_journal([store(n, float(n)) for n in range(1, 9)], {})
    catalog.apply_journal([JournalRecord(RecordKind.STORE, key(20, other), 1.0, 1000, 0)], {})
    # 1-2 read once, 3-4 twice or more; 5 an orphan (read once), 6 an orphan never read, 7 superseded.
    catalog.apply_journal([access(n, 10.0) for n in (1, 2, 3, 3, 4, 4, 4, 5)], {})
    with testing.connection(catalog, write=True) as conn:
        conn.execute(
            text("UPDATE blocks SET orphan = TRUE WHERE block_hash IN (:a, :b)"),
            {
                "a": key(5).block_hash,
                "b": key(6).block_hash,
            },
        )
        conn.execute(
            text("UPDATE blocks SET superseded = TRUE WHERE block_hash = :h"), {"h": key(7).block_hash}
        )
    # FRESH: 8 and the other namespace's 20; ONCE: 1, 2; FREQUENT: 3, 4.
    total = catalog.fifo_queue_sizes(None)[1]
    assert total == 1800
    assert catalog.class_bytes(None, total) == (1100, 200, 200)
    ns_id = catalog.namespace_id(NS)
    assert ns_id is not None
    assert catalog.class_bytes([ns_id], catalog.fifo_queue_sizes([ns_id])[1]) == (100, 200, 200)
    # FRESH is what the other classes leave: a total read before a store never makes it negative.
    assert catalog.class_bytes(None, 600) == (0, 200, 200)
    if catalog.dialect == "sqlite":  # index-only: no table row read, FRESH's index not at all
        plan = testing.statement_plan(catalog, streams.class_bytes_sql("sqlite"), ())
        for name in ("reused", "orphan", "superseded"):
            assert f"COVERING INDEX ix_blocks_{name}_lru" in plan
        assert "fresh" not in plan


def test_upgrade_from_v8_keeps_ghosts_and_states(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as catalog:
        catalog.apply_journal([store(n, float(n)) for n in range(1, 4)], {})
        ghosts.remember(catalog, "prefix", [(key(7), 5.0, True)], keep_newest=False)
        with testing.connection(catalog, write=True) as conn:
            for ddl in testing.TO_V8:
                conn.execute(text(ddl))
            conn.execute(text("INSERT INTO policy_states VALUES ('prefix', 3, 3.0, 0.125)"))
        assert "frequent" not in testing.columns(catalog, "policy_ghosts")
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == 9
        assert "frequent" in testing.columns(catalog, "policy_ghosts")
        assert "extra" in testing.columns(catalog, "policy_states")
        assert ghosts.ghost_counts(catalog, "prefix") == {True: 1}
        assert ghosts.bonus(catalog, policy="prefix", default_beta=0.0)[0] == 0.125
        # adaptive runs on the upgraded catalog and keeps its third class there.
        ghosts.remember_classes(catalog, "adaptive", [(key(8), 6.0, 2), (key(9), 6.0, 1)])
        counts = ghosts.settle_classes(
            catalog, policy="adaptive", horizon=3.0, adapt=lambda r, g, b, e: (b, "{}"), initial_beta=0.0
        )
        assert counts.ghosts == (0, 1, 1)
        # The FRESH and REUSED LRU indexes now cover their class's bytes, and the sums read them.
        ix = testing.index_columns(catalog, "blocks")
        for name in ("ix_blocks_reused_lru", "ix_blocks_orphan_lru", "ix_blocks_superseded_lru"):
            assert ix[name] == ["last_access", "size", "hits", "orphan", "superseded"]
        assert ix["ix_blocks_fresh_lru"] == ["last_access"]
        assert catalog.class_bytes(None, catalog.fifo_queue_sizes(None)[1]) == (300, 0, 0)


def test_kvfs_gc_runs_adaptive_and_continues_its_state(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fields = kvfs_fields({"model_name": "org/model", "block_size": 16})
    write_namespace_config(root, fields)
    ns = namespace_name(fields)
    fingerprint = fingerprint_sha256(fields)
    records = []
    for n in range(1, 21):
        k = BlockKey(ns, 0, 0, f"{n:016x}{n:016x}", "kvfs")
        result = store_block(root / k.relpath(), os.urandom(1000), BlockIdentity(fingerprint, b"k%d" % n))
        assert result.outcome is StoreOutcome.STORED
        records.append(JournalRecord(RecordKind.STORE, k, 1000.0 + n, 10_000, 0))
    directory = journal_dir(root)
    directory.mkdir(parents=True)
    (directory / segment_name("w1", 0)).write_bytes(b"".join(encode_record(r) for r in records) + END_RECORD)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    base = ["--root", str(root), "--catalog", url]
    size = (root / BlockKey(ns, 0, 0, f"{1:016x}{1:016x}", "kvfs").relpath()).stat().st_size
    gc = CliRunner().invoke(
        kvfs_cli, [*base, "gc", "--policy", "adaptive", "--max-bytes", str(15 * size), "--json"]
    )
    assert gc.exit_code == 0, gc.output
    out = json.loads(gc.stdout)
    assert out["deleted_files"] == 5 and out["plan"]["policy"] == "adaptive"
    with Catalog.open(url) as catalog:
        assert stored_state(catalog)["order"] == SHARES
        assert ghosts.ghost_counts(catalog, "adaptive") == {False: 5}
    again = CliRunner().invoke(
        kvfs_cli, [*base, "gc", "--policy", "adaptive", "--max-bytes", str(10 * size), "--json"]
    )
    assert again.exit_code == 0 and json.loads(again.stdout)["deleted_files"] == 5


def test_adaptive_is_the_default() -> None:
    assert DEFAULT_POLICY == "adaptive" and isinstance(get_policy(), AdaptivePolicy)
