"""Eviction passes on real block files and real catalogs (SQLite and PostgreSQL): plan_pass + execute_plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import BlockRow, Catalog
from kvfs.eviction import (
    EvictReason,
    Limits,
    PassHooks,
    Victim,
    execute_plan,
    plan_pass,
    recency_recheck,
)
from kvfs.eviction.ingest import ingest_journals
from kvfs.journal import JournalWriter
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config

NOW = 1_000_000.0
PAYLOAD = 1000


def make_namespace(root: Path, model: str) -> tuple[str, bytes]:
    fields = kvfs_fields({"model_name": model, "block_size": 16, "dtype": "bfloat16"})
    write_namespace_config(root, fields)
    return namespace_name(fields), fingerprint_sha256(fields)


def hash_of(n: int) -> str:
    """A block hash for number n, in its own bucket directories (so a test can tamper with one block's)."""
    return f"{n:03x}{n % 256:02x}{n:027x}"


def num(victim: Victim) -> int:
    return int(victim.key.block_hash[5:], 16)


def write_block(root: Path, ns: str, fp: bytes, n: int, *, rank: int | None = 0) -> tuple[BlockKey, int]:
    key = BlockKey(ns, rank, 0, hash_of(n), "kvfs")
    res = store_block(
        root / key.relpath(), bytes([n % 256]) * PAYLOAD, BlockIdentity(fp, n.to_bytes(8, "big"))
    )
    assert res.outcome is StoreOutcome.STORED
    return key, os.stat(root / key.relpath()).st_size


class Tree:
    """A root with two namespaces of real block files, and a catalog holding them with chosen recencies."""

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root = root
        self.catalog = catalog
        self.ns_a, self.fp_a = make_namespace(root, "org/model-a")
        self.ns_b, self.fp_b = make_namespace(root, "org/model-b")
        self.keys: dict[int, BlockKey] = {}
        self.size = 0

    def add(
        self, ns: str, n: int, last_access: float, *, chain_pos: int = -1, created: float | None = None
    ) -> None:
        fp = self.fp_a if ns == self.ns_a else self.fp_b
        key, size = write_block(self.root, ns, fp, n)
        self.keys[n] = key
        self.size = size
        created = last_access if created is None else created
        self.catalog.upsert_blocks([BlockRow(key, size, created, last_access, chain_pos=chain_pos)])

    def exists(self, n: int) -> bool:
        return (self.root / self.keys[n].relpath()).exists()

    def present(self) -> set[int]:
        return {n for n in self.keys if self.exists(n)}


@pytest.fixture
def tree(tmp_path: Path, catalog_url: str):
    root = tmp_path / "root"
    root.mkdir()
    catalog = Catalog.open(catalog_url, root=root)
    yield Tree(root, catalog)
    catalog.close()


def fill(tree: Tree, count: int = 10) -> None:
    """Blocks 1..count in namespace A, block n last accessed at NOW - 1000 + n (1 is the oldest)."""
    for n in range(1, count + 1):
        tree.add(tree.ns_a, n, NOW - 1000 + n)


def run(tree: Tree, limits: Limits, **kw):
    plan = plan_pass(tree.catalog, limits, now=NOW, policy="lru")
    return plan, execute_plan(tree.root, tree.catalog, plan, now=NOW, **({"dry_run": False} | kw))


def deleted_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("kvfs_evicted_files_total", {"reason": reason}) or 0.0


def test_capacity_evicts_oldest_until_under_the_cap(tree: Tree) -> None:
    fill(tree)
    counted_before = deleted_metric("capacity")
    plan, result = run(tree, Limits(max_bytes=tree.size * 6 + 1))
    assert deleted_metric("capacity") - counted_before == 4
    assert [num(v) for v in plan.victims] == [1, 2, 3, 4]
    assert {v.reason for v in plan.victims} == {EvictReason.CAPACITY}
    assert (result.deleted_files, result.deleted_bytes) == (4, 4 * tree.size)
    assert result.by_reason[EvictReason.CAPACITY].files == 4
    assert tree.present() == set(range(5, 11))
    assert tree.catalog.block_count() == 6
    (entry,) = tree.catalog.eviction_log()
    assert (entry.namespace, entry.reason, entry.files, entry.bytes) == (
        tree.ns_a,
        "capacity",
        4,
        4 * tree.size,
    )
    # A second pass finds nothing to do.
    plan2, result2 = run(tree, Limits(max_bytes=tree.size * 6 + 1))
    assert plan2.total_files == 0 and result2.deleted_files == 0


def test_ttl_retire_quota_and_capacity_in_order_without_double_counting(tree: Tree) -> None:
    fill(tree)  # A: 1..10
    for n in range(11, 15):  # B: 11..14, older than every A block
        tree.add(tree.ns_b, n, NOW - 5000 + n)
    limits = Limits(
        ttl=995.0,  # A blocks 1..5 are older than NOW - 995 ... and every B block
        retire=[tree.ns_b],
        quotas={tree.ns_a: tree.size * 4},  # A keeps at most 4 blocks
        max_bytes=tree.size * 2,
    )
    plan, result = run(tree, limits)
    reasons = {num(v): v.reason for v in plan.victims}
    assert {n for n, r in reasons.items() if r is EvictReason.RETIRED} == {11, 12, 13, 14}
    assert {n for n, r in reasons.items() if r is EvictReason.TTL} == {1, 2, 3, 4}
    assert {n for n, r in reasons.items() if r is EvictReason.QUOTA} == {5, 6}
    assert {n for n, r in reasons.items() if r is EvictReason.CAPACITY} == {7, 8}
    assert len(plan.victims) == len(reasons) == 12
    assert plan.total_bytes == 12 * tree.size
    assert tree.present() == {9, 10}
    assert result.deleted_files == 12
    assert {str(r): t.files for r, t in result.by_reason.items()} == {
        "retired": 4,
        "ttl": 4,
        "quota": 2,
        "capacity": 2,
    }
    assert plan.by_namespace[tree.ns_b].files == 4 and plan.by_namespace[tree.ns_a].files == 8


def test_min_age_protects_recent_blocks_even_over_capacity(tree: Tree) -> None:
    for n in range(1, 5):
        tree.add(tree.ns_a, n, NOW - 10 * n)  # 1: 10 s old ... 4: 40 s old
    plan, _ = run(tree, Limits(max_bytes=0, min_age=25.0))
    assert sorted(num(v) for v in plan.victims) == [3, 4]
    assert tree.present() == {1, 2}


def test_recently_created_block_with_old_access_is_protected(tree: Tree) -> None:
    tree.add(tree.ns_a, 1, NOW - 3600, created=NOW - 1)
    tree.add(tree.ns_a, 2, NOW - 3600)
    plan, _ = run(tree, Limits(ttl=60.0, min_age=10.0))
    assert [num(v) for v in plan.victims] == [2]


def test_namespace_scope_caps_that_namespace_only(tree: Tree) -> None:
    fill(tree, 4)
    for n in range(11, 15):
        tree.add(tree.ns_b, n, NOW - 5000 + n)  # older than A: would go first globally
    plan, _ = run(tree, Limits(max_bytes=tree.size * 3, namespace=tree.ns_a))
    assert [num(v) for v in plan.victims] == [1]
    assert plan.usage_files == 4
    assert tree.present() == {2, 3, 4, 11, 12, 13, 14}


def test_unknown_scope_is_a_clear_error_and_unknown_retire_is_skipped(tree: Tree) -> None:
    fill(tree, 2)
    with pytest.raises(ValueError, match="unknown namespace"):
        plan_pass(tree.catalog, Limits(max_bytes=0, namespace="nope"), now=NOW)
    # A retired namespace the catalog does not know (a typo, or gone already) must not stop the other limits:
    # before, the whole pass raised and nothing was ever evicted again.
    plan = plan_pass(tree.catalog, Limits(retire=["nope"], max_bytes=tree.size), now=NOW, policy="lru")
    assert plan.unknown_namespaces == ["nope"]
    assert [v.reason for v in plan.victims] == [EvictReason.CAPACITY]


def test_retired_namespace_and_quota_for_unknown_namespace(tree: Tree) -> None:
    fill(tree, 3)
    tree.add(tree.ns_b, 20, NOW - 100)
    plan, _ = run(tree, Limits(retire=[tree.ns_b], quotas={"never_written_0123456789ab": 0}))
    assert [(num(v), v.reason) for v in plan.victims] == [(20, EvictReason.RETIRED)]
    assert plan.unknown_namespaces == []


def test_dry_run_deletes_nothing_and_reports_the_plan(tree: Tree) -> None:
    fill(tree)
    plan, result = run(tree, Limits(max_bytes=0), dry_run=True)
    assert result.dry_run is True
    assert (result.deleted_files, result.deleted_bytes) == (10, 10 * tree.size)
    assert tree.present() == set(range(1, 11))
    assert tree.catalog.block_count() == 10
    assert tree.catalog.eviction_log() == []


def test_already_missing_file_loses_its_row_and_is_not_counted_as_deleted(tree: Tree) -> None:
    fill(tree, 3)
    os.unlink(tree.root / tree.keys[1].relpath())
    _, result = run(tree, Limits(max_bytes=0))
    assert (result.deleted_files, result.missing) == (2, 1)
    assert tree.catalog.block_count() == 0


def test_planted_symlinks_are_never_followed(tree: Tree, tmp_path: Path) -> None:
    fill(tree, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    # Block 1's file becomes a symlink to a file outside the root.
    victim_file = outside / "precious.kvfs"
    victim_file.write_bytes(b"keep me")
    path1 = tree.root / tree.keys[1].relpath()
    path1.unlink()
    path1.symlink_to(victim_file)
    # Block 2's bucket directory becomes a symlink to a directory outside the root holding the same name.
    path2 = tree.root / tree.keys[2].relpath()
    bucket = path2.parent
    decoy_dir = outside / "bucket"
    decoy_dir.mkdir()
    (decoy_dir / path2.name).write_bytes(b"keep me too")
    for child in bucket.iterdir():
        child.unlink()
    bucket.rmdir()
    bucket.symlink_to(decoy_dir, target_is_directory=True)

    _, result = run(tree, Limits(max_bytes=0))
    assert victim_file.read_bytes() == b"keep me"
    assert (decoy_dir / path2.name).read_bytes() == b"keep me too"
    assert path1.is_symlink()
    assert result.refused == 2
    assert result.deleted_files == 1 and not tree.exists(3)
    # Refused victims keep their rows: nothing is forgotten that may still be on disk.
    assert tree.catalog.block_count() == 2


def test_recheck_spares_blocks_accessed_after_planning(tree: Tree) -> None:
    fill(tree, 4)
    plan = plan_pass(tree.catalog, Limits(max_bytes=0), now=NOW, policy="lru")
    assert len(plan.victims) == 4
    # A reader touches block 2 between planning and deletion: its access is journaled.
    writer = JournalWriter(tree.root, writer_id="reader-1")
    writer.record_access(tree.keys[2], now=NOW + 5)
    writer.close()
    recheck = recency_recheck(
        tree.catalog, PassHooks(ingest=lambda: ingest_journals(tree.root, tree.catalog))
    )
    result = execute_plan(
        tree.root, tree.catalog, plan, dry_run=False, recheck=recheck, batch_size=2, now=NOW
    )
    assert result.skipped_recently_used == 1
    assert tree.present() == {2}
    assert tree.catalog.last_access_of([tree.keys[2]]) == {tree.keys[2]: NOW + 5}


def test_recheck_drops_victims_whose_rows_are_gone(tree: Tree) -> None:
    fill(tree, 2)
    plan = plan_pass(tree.catalog, Limits(max_bytes=0), now=NOW, policy="lru")
    tree.catalog.remove_blocks([tree.keys[1]])
    result = execute_plan(
        tree.root, tree.catalog, plan, dry_run=False, recheck=recency_recheck(tree.catalog), now=NOW
    )
    assert result.skipped_recently_used == 1
    assert tree.present() == {1}


def test_victims_without_block_id_are_removed_by_key(tree: Tree) -> None:
    fill(tree, 2)
    plan = plan_pass(tree.catalog, Limits(max_bytes=0), now=NOW, policy="lru")
    plan.victims = [Victim(v.key, v.size, v.reason, v.last_access, None) for v in plan.victims]
    execute_plan(tree.root, tree.catalog, plan, dry_run=False, now=NOW)
    assert tree.catalog.block_count() == 0 and tree.present() == set()


def test_ingest_journals_applies_stores_and_accesses_without_removing_segments(tree: Tree) -> None:
    fill(tree, 2)
    key3, size3 = write_block(tree.root, tree.ns_a, tree.fp_a, 3)
    with JournalWriter(tree.root, writer_id="engine-0", max_segment_age=0.01) as writer:
        writer.record_store(key3, size3, chain_pos=2, now=NOW - 1)
        writer.record_access(tree.keys[1], now=NOW)
    first = ingest_journals(tree.root, tree.catalog)
    assert first.records == 2 and first.segments_removed == 0
    assert tree.catalog.block_count() == 3
    assert tree.catalog.last_access_of([tree.keys[1]])[tree.keys[1]] == NOW
    # Idempotent: offsets were saved with the records.
    assert ingest_journals(tree.root, tree.catalog).records == 0
    assert any(tree.root.joinpath(".kvfs/journal").iterdir())
    # Block 1 is now the most recent: LRU takes 2 then 3 first.
    plan = plan_pass(tree.catalog, Limits(max_bytes=tree.size), now=NOW + 10, policy="lru")
    assert [num(v) for v in plan.victims] == [2, 3]


def test_retired_namespace_leaves_no_empty_bucket_directories(tree: Tree) -> None:
    fill(tree, 3)
    for n in range(11, 15):
        tree.add(tree.ns_b, n, NOW - 100)
    run(tree, Limits(retire=[tree.ns_b]))
    rank_dir = tree.root / f"{tree.ns_b}_r0"
    assert rank_dir.is_dir() and list(rank_dir.iterdir()) == []  # depth 1 stays, its buckets are gone
    assert (tree.root / tree.ns_b / "config.json").exists()
    # Other namespaces' directories are untouched.
    assert tree.present() == {1, 2, 3}


def test_capacity_eviction_removes_emptied_bucket_directories_only(tree: Tree) -> None:
    fill(tree, 4)
    # A block outside the catalog shares block 4's top bucket (004/) in its own leaf bucket: after 4 goes, 004/
    # is not empty and must stay.
    shared = BlockKey(tree.ns_a, 0, 0, f"{4:03x}ff{4:027x}", "kvfs")
    store_block(tree.root / shared.relpath(), b"x" * PAYLOAD, BlockIdentity(tree.fp_a, b"shared"))
    before = REGISTRY.get_sample_value("kvfs_dirs_removed_total") or 0.0
    _plan, result = run(tree, Limits(max_bytes=0))
    assert result.deleted_files == 4
    rank_dir = tree.root / f"{tree.ns_a}_r0"
    for n in (1, 2, 3):  # each had its own buckets: both levels gone
        assert not (rank_dir / hash_of(n)[:3]).exists()
    assert not (rank_dir / "004" / "04_g0").exists()
    assert (rank_dir / "004" / "ff_g0").is_dir()  # not empty: kept, with its parent
    assert rank_dir.is_dir() and (tree.root / tree.ns_a / "config.json").exists()
    assert result.dirs_removed == 7 and result.to_json()["dirs_removed"] == 7
    assert (REGISTRY.get_sample_value("kvfs_dirs_removed_total") or 0.0) - before == 7
