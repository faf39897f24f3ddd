"""Read commands never write: `kvfs ls`, `kvfs du` and `kvfs evictor status` leave every table and row of the
catalog as they found it (the default policy's bookkeeping happens only in a pass), and they work on a catalog
SQLite itself refuses to write (`?mode=ro`), still in the default policy's order, not silently in LRU's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvfs.catalog import BlockRow, Catalog, CatalogError, ghosts, testing
from kvfs.cli import main
from kvfs.eviction import Limits, plan_pass
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY, get_policy

NS = "org_model_0123456789ab"
OTHER = "org_other_0123456789ab"
B = 100


def key(n: int, ns: str = NS) -> BlockKey:
    return BlockKey(ns, None, 0, f"{n:016x}{n:016x}", "kvfs")  # distinct 64-bit prefixes: ghost keys


def store(n: int, t: float, pos: int, parent: int | None, ns: str = NS) -> JournalRecord:
    return JournalRecord(
        RecordKind.STORE, key(n, ns), t, B, pos, None if parent is None else key(parent, ns).block_hash
    )


def build(catalog: Catalog) -> None:
    """A catalog as the demo leaves it: chains, reused blocks, an orphaned tail, a superseded leaf, ghosts and
    `prefix`'s state from earlier passes, and re-stores since the last one (which a settle would count: a read
    command that settled would change the bonus, the ghosts and the watermark)."""
    catalog.apply_journal(
        [
            # An old chain 1-2-3 whose head will be evicted (2, 3 become orphans).
            store(1, 10.0, 0, None),
            store(2, 10.0, 1, 1),
            store(3, 10.0, 2, 2),
            # A conversation: turn 1 stored 20-21-22; turn 2 re-read 20-21 and replaced 22 by 23 (22 superseded).
            store(20, 20.0, 0, None),
            store(21, 20.0, 1, 20),
            store(22, 20.0, 2, 21),
            store(9, 15.0, 0, None, OTHER),
        ],
        {"w1.00000001.jnl": 512},
    )
    # Reused R (40) slightly older than never-read F (41): LRU takes R first, the bonus keeps it.
    catalog.upsert_blocks([BlockRow(key(40), B, 35.0, 36.0, chain_pos=0, hits=3)])
    catalog.upsert_blocks([BlockRow(key(41), B, 37.0, 37.0, chain_pos=0)])
    catalog.upsert_blocks([BlockRow(key(50), B, 5.0, 5.0, chain_pos=0, hits=1)])  # to be evicted: a ghost
    # A pass: prepare, plan, delete, remember (what the evictor does).
    policy = get_policy("prefix")
    plan = plan_pass(catalog, Limits(max_bytes=catalog.usage().total_bytes - B), now=1000.0, policy=policy)
    assert [v.key for v in plan.victims] == [key(50)]
    catalog.remove_block_ids([v.block_id for v in plan.victims if v.block_id is not None])
    policy.evicted(catalog, plan.victims)
    catalog.log_eviction(1000.0, NS, "capacity", 1, B)
    catalog.apply_journal(
        [
            JournalRecord(RecordKind.ACCESS, key(20), 30.0),
            JournalRecord(RecordKind.ACCESS, key(21), 30.0),
            store(23, 30.0, 2, 21),
        ],
        {"w1.00000001.jnl": 1024},
    )
    catalog.remove_blocks([key(1)])  # the head of 1-2-3 goes (a TTL, a corrupt file): 2 and 3 are orphans
    # A bonus from earlier passes (the policy's real write path, with a rule that sets it).
    ghosts.settle(catalog, policy="prefix", adapt=lambda *_: 0.25, initial_beta=0.0, horizon=10.0)
    # Block 50 comes back after its eviction: the next pass's settle would count it and spend its ghost.
    catalog.upsert_blocks([BlockRow(key(50), B, 60.0, 60.0, chain_pos=0)])
    flags = catalog.chain_counts()
    assert flags["orphans"] == 2 and flags["superseded"] == 1
    assert ghosts.ghost_counts(catalog, "prefix") == {True: 1}


def invoke(root: Path, catalog_url: str, *args: str):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["--root", str(root), "--catalog", catalog_url, *args])
    assert result.exit_code == 0, result.output
    return result


def listed(root: Path, catalog_url: str, *args: str) -> list[int]:
    out = json.loads(invoke(root, catalog_url, "ls", NS, "--json", *args).stdout)
    return [int(b["hash"][:16], 16) for b in out["blocks"]]


READ_COMMANDS = (
    ("ls", NS),
    ("ls", NS, "--json", "--limit", "0"),
    ("ls", NS, "--policy", "2q"),
    ("ls", NS, "--policy", "prefix"),
    ("ls", NS, "--policy", "adaptive", "--json"),
    ("du",),
    ("du", "--json"),
    ("du", "--by", "model"),
    ("du", "--by", "rank", "--json"),
    ("du", "--by", "age"),
)


def test_read_commands_leave_the_catalog_dump_identical(catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with Catalog.open(catalog_url) as catalog:
        build(catalog)
        before = testing.dump(catalog)
    assert before["policy_states"] and before["policy_ghosts"] and before["evictions"]
    for args in READ_COMMANDS:
        invoke(root, catalog_url, *args)
    status = CliRunner().invoke(
        main, ["evictor", "status", "--url", "http://127.0.0.1:9", "--catalog", catalog_url, "--json"]
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["usage"]["catalog_files"] == sum(len(r) for r in [before["blocks"]])
    with Catalog.open(catalog_url) as catalog:
        after = testing.dump(catalog)
    assert after == before
    # ...while a pass does write: its prepare step settles the re-store of block 50.
    with Catalog.open(catalog_url) as catalog:
        get_policy("prefix").prepare(catalog)
        assert testing.dump(catalog) != before


def test_read_commands_work_on_a_read_only_catalog_in_the_default_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    db = tmp_path / "catalog.db"
    with Catalog.open(f"sqlite:///{db}") as catalog:
        build(catalog)
        before = testing.dump(catalog)
    db.chmod(0o444)
    ro = f"sqlite:///{db}?mode=ro"
    # The URL is really read-only: SQLite refuses a write.
    with Catalog.open(ro, create=False) as catalog, pytest.raises(CatalogError, match="readonly"):
        catalog.set_meta("probe", "x")
    # `prefix`'s order with its stored bonus: orphans, the superseded leaf, then never-read F (41) before the
    # older reused R (40), which plain LRU would take first.
    prefix = listed(root, ro, "--policy", "prefix")
    assert prefix[:3] == [3, 2, 22]
    assert prefix.index(41) < prefix.index(40)
    lru = listed(root, ro, "--policy", "lru")
    assert lru.index(40) < lru.index(41) and lru != prefix
    # The default policy puts the same dead blocks first, read-only too.
    assert DEFAULT_POLICY == "adaptive" and listed(root, ro)[:3] == [3, 2, 22]
    for args in READ_COMMANDS:
        invoke(root, ro, *args)
    status = CliRunner().invoke(main, ["evictor", "status", "--url", "http://127.0.0.1:9", "--catalog", ro])
    assert status.exit_code == 0, status.output
    db.chmod(0o644)
    with Catalog.open(f"sqlite:///{db}") as catalog:
        assert testing.dump(catalog) == before


def test_only_mode_ro_is_accepted_as_a_sqlite_url_option(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"only \?mode=ro"):
        Catalog.open(f"sqlite:///{tmp_path / 'c.db'}?mode=rwc")
