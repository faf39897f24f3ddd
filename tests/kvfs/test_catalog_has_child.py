"""`blocks.has_child` (schema v7) and the bounded superseded check, on SQLite and on PostgreSQL.

The superseded rule reads its candidates from `ix_blocks_branch`, whose WHERE excludes rows with `has_child`:
the flag must never be TRUE for a block without children (else the rule would skip it), and a FALSE one with
children (a block stored when its children were there already) must be healed by the first check that reads
it (else every later check would read it again).  A randomized run of every write the catalog makes (journal
batches, re-stores behind another parent, blocks stored again after their removal or after their children,
another format of a block, bulk upserts, scans, removal by key, by id and by a scan) compares the flag with a
brute-force EXISTS after each step, and the superseded and orphan marks with a SQLite catalog running the
statement of v6 (a NOT EXISTS probe per sibling): the rule is unchanged.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import text

from kvfs.catalog import BlockRow, Catalog, testing
from kvfs.catalog.catalog import PG_COPY_MIN_ROWS
from kvfs.catalog.schema import SCHEMA_VERSION
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey

NS = "org_model_0123456789ab"
NS2 = "other_model_ba9876543210"

# The v6 statement (every sibling visited, a child probe each), run by the reference catalog.
V6_SUPERSEDE = (
    "UPDATE blocks SET superseded = TRUE "
    "WHERE namespace_id = ? AND parent_hash = ? AND rank = ? AND grp = ? AND block_hash != ? "
    "AND hits = 0 AND NOT orphan AND NOT superseded AND +last_access < ? "
    "AND NOT EXISTS (SELECT 1 FROM blocks c WHERE c.namespace_id = blocks.namespace_id "
    "AND c.parent_hash = blocks.block_hash AND c.rank = blocks.rank AND c.grp = blocks.grp)"
)

_CHILDREN = (
    "EXISTS (SELECT 1 FROM blocks c WHERE c.namespace_id = b.namespace_id AND c.parent_hash = b.block_hash "
    "AND c.rank = b.rank AND c.grp = b.grp)"
)
# Rows flagged without a child (never allowed) and rows with children not flagged (until a check reads them).
FALSE_FLAGS = f"SELECT count(*) FROM blocks b WHERE has_child AND NOT {_CHILDREN}"
UNFLAGGED = f"SELECT count(*) FROM blocks b WHERE NOT has_child AND {_CHILDREN}"


def h(n: int) -> str:
    return f"{n:032x}"


def key(n: int, *, ns: str = NS, rank: int | None = None, fmt: str = "kvfs") -> BlockKey:
    return BlockKey(ns, rank, 0, h(n), fmt)  # type: ignore[arg-type]


def wrong_flags(catalog: Catalog) -> int:
    return int(testing.scalar(catalog, FALSE_FLAGS))


def unflagged(catalog: Catalog) -> int:
    return int(testing.scalar(catalog, UNFLAGGED))


def unflagged_in_branch_range(catalog: Catalog, batch: list[JournalRecord]) -> int:
    """Rows with children left unflagged among the markable siblings of the parents whose siblings `batch` had
    checked (as `_journal_rows`: a parent not stored in the batch, or with several children stored in it)."""
    stores = {r.key: r.parent for r in batch if r.kind == RecordKind.STORE}  # the last record's parent counts
    last = {}
    for r in batch:
        if r.kind == RecordKind.STORE and r.parent is not None:
            last[r.key] = r.parent
    stores = {k: last.get(k) for k in stores}
    stored = {(k.namespace, k.rank, k.block_hash) for k in stores}
    children: dict[tuple[str, int | None, str], int] = {}
    for k, parent in stores.items():
        if parent is not None:
            children[(k.namespace, k.rank, parent)] = children.get((k.namespace, k.rank, parent), 0) + 1
    parents = {p for p, n in children.items() if p not in stored or n > 1}
    left = 0
    for ns, rank, parent in parents:
        left += int(
            testing.scalar(
                catalog,
                "SELECT count(*) FROM blocks b JOIN namespaces n ON n.id = b.namespace_id WHERE n.name = :ns "
                "AND b.rank = :rank AND b.parent_hash = :parent AND hits = 0 AND NOT orphan AND NOT superseded "
                f"AND NOT has_child AND {_CHILDREN}",
                ns=ns,
                rank=-1 if rank is None else rank,
                parent=parent,
            )
        )
    return left


def marks(catalog: Catalog) -> dict[str, set[tuple[str, int, str, str]]]:
    with testing.connection(catalog) as conn:
        return {
            flag: {
                tuple(r)  # type: ignore[misc]
                for r in conn.execute(
                    text(
                        "SELECT n.name, b.rank, b.block_hash, b.fmt FROM blocks b "
                        f"JOIN namespaces n ON n.id = b.namespace_id WHERE b.{flag}"
                    )
                )
            }
            for flag in ("superseded", "orphan", "has_child")
        }


class Steps:
    """One random sequence of writes, applied to several catalogs alike."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 1000.0

    def a_key(self) -> BlockKey:
        r = self.rng
        return key(
            r.randrange(14),
            ns=NS if r.random() < 0.85 else NS2,
            rank=None if r.random() < 0.8 else 1,
            fmt="kvfs" if r.random() < 0.9 else "bin",
        )

    def a_parent(self, k: BlockKey) -> str | None:
        r = self.rng
        if r.random() < 0.15:
            return None
        while True:
            parent = h(r.randrange(14))
            if parent != k.block_hash:
                return parent

    def next_op(self) -> tuple[str, object]:
        r = self.rng
        self.now += r.choice((0.5, 1.0, 3.0))
        roll = r.random()
        if roll < 0.45:  # a journal batch: chains, branches, re-stores, reads
            records = []
            # Now and then one as large as ingest's (PostgreSQL's COPY paths; keys stored and read many times).
            for _ in range(600 if r.random() < 0.05 else r.randint(1, 6)):
                k = self.a_key()
                if r.random() < 0.7:
                    t = self.now + r.random()
                    records.append(JournalRecord(RecordKind.STORE, k, t, 100, 1, self.a_parent(k)))
                else:
                    records.append(JournalRecord(RecordKind.ACCESS, k, self.now + r.random()))
            return "journal", records
        if roll < 0.55:  # rows given directly (duplicates, another parent for the same key)
            n = r.choice((1, 3, 600)) if r.random() < 0.3 else r.randint(1, 4)
            rows = []
            for _ in range(n):
                k = self.a_key()
                rows.append(BlockRow(k, 100, self.now, self.now, 1, parent_hash=self.a_parent(k)))
            return "upsert", rows
        if roll < 0.62:  # a scan finds files (no parent recorded)
            found = [(0, h(r.randrange(14)), "kvfs", 100, self.now, self.now) for _ in range(r.randint(1, 4))]
            return "scan", [(NS, None, found)]
        if roll < 0.77:
            return "remove", [self.a_key() for _ in range(r.randint(1, 3))]
        if roll < 0.9:
            return "remove_ids", [self.a_key() for _ in range(r.randint(1, 3))]
        return "prune", self.now - r.choice((2.0, 10.0, 40.0))


def apply(catalog: Catalog, op: str, arg: object) -> None:
    if op == "journal":
        catalog.apply_journal(arg, {})  # type: ignore[arg-type]
    elif op == "upsert":
        catalog.upsert_blocks(arg)  # type: ignore[arg-type]
    elif op == "scan":
        catalog.upsert_scanned(arg, seen=0.0)  # type: ignore[arg-type]
    elif op == "remove":
        catalog.remove_blocks(arg)  # type: ignore[arg-type]
    elif op == "remove_ids":
        rows = catalog.get_blocks(arg)  # type: ignore[arg-type]
        catalog.remove_block_ids([row.block_id for row in rows.values() if row.block_id is not None])
    else:
        catalog.prune_missing(arg, grace=0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_has_child_is_exact_and_the_marks_are_v6s(catalog_url: str, tmp_path: Path, seed: int) -> None:
    steps = Steps(seed)
    with Catalog.open(catalog_url) as cat, Catalog.open(f"sqlite:///{tmp_path / 'v6-rule.db'}") as ref:
        ref._sql.supersede = V6_SUPERSEDE
        seen_ops, reached, unflagged_seen, large = set(), set(), False, 0
        for step in range(160):
            op, arg = steps.next_op()
            seen_ops.add(op)
            large += op == "journal" and len(arg) >= PG_COPY_MIN_ROWS  # type: ignore[arg-type]
            apply(cat, op, arg)
            apply(ref, op, arg)
            assert wrong_flags(cat) == 0, (step, op)
            if op == "journal":  # a sibling check heals what it reads
                assert unflagged_in_branch_range(cat, arg) == 0, (step, op)
            unflagged_seen = unflagged_seen or unflagged(cat) > 0
            now, theirs = marks(cat), marks(ref)
            # (`has_child` itself may differ: which rows are left to heal depends on the statements' order.)
            assert (now["superseded"], now["orphan"]) == (theirs["superseded"], theirs["orphan"]), (step, op)
            reached |= {flag for flag, rows in now.items() if rows}
        assert seen_ops == {"journal", "upsert", "scan", "remove", "remove_ids", "prune"}
        assert reached == {"superseded", "orphan", "has_child"}
        assert unflagged_seen  # the run made rows whose children came first
        assert large  # and applied journal batches of the size ingest reads


def test_has_child_follows_each_way_a_link_changes(catalog: Catalog) -> None:
    def has_child(n: int, **kw: object) -> bool:
        with testing.connection(catalog) as conn:
            return bool(
                conn.execute(
                    text("SELECT has_child FROM blocks WHERE block_hash = :h AND rank = :r"),
                    {"h": h(n), "r": -1 if kw.get("rank") is None else kw["rank"]},
                ).scalar_one()
            )

    def store(n: int, parent: int | None, t: float) -> JournalRecord:
        return JournalRecord(RecordKind.STORE, key(n), t, 100, 1, None if parent is None else h(parent))

    # A child stored in the same batch as its parent, and in a later one.
    catalog.apply_journal([store(1, None, 1.0), store(2, 1, 1.0)], {})
    assert has_child(1) and not has_child(2)
    catalog.apply_journal([store(3, 2, 2.0)], {})
    assert has_child(2)
    # Re-stored behind another parent: the old parent is childless again, the new one has a child.
    catalog.apply_journal([store(4, None, 3.0), store(3, 4, 3.0)], {})
    assert not has_child(2) and has_child(4)
    # A parent removed and stored again while its child stayed (an orphan now): stored behind a parent from an
    # earlier batch, the sibling check of its own store reads it, finds the child and flags it (no mark).
    catalog.remove_blocks([key(4)])
    catalog.apply_journal([store(4, 1, 4.0)], {})
    assert has_child(4) and not catalog.get_blocks([key(4)])[key(4)].superseded
    # Found again by a scan (no parent recorded: no sibling check reads it), then stored behind 1 again.
    catalog.remove_blocks([key(4)])
    catalog.upsert_scanned([(NS, None, [(0, h(4), "kvfs", 100, 5.0, 5.0)])], seen=5.0)
    assert not has_child(4) and unflagged(catalog) == 1
    catalog.apply_journal([store(4, 1, 5.5)], {})
    assert has_child(4) and unflagged(catalog) == 0
    # Its child came first: unflagged, and read by no check while it has no parent.
    catalog.apply_journal([store(6, 5, 6.0)], {})
    catalog.upsert_blocks([BlockRow(key(5), 100, 6.0, 6.0, 0)])
    assert not has_child(5) and unflagged(catalog) == 1
    # The last child removed, by key, by id and by a scan finding its file gone.
    catalog.remove_blocks([key(6)])
    assert not has_child(5) and unflagged(catalog) == 0
    (three,) = [r.block_id for r in catalog.iter_blocks() if r.key == key(3)]
    assert three is not None and catalog.remove_block_ids([three]) == 1
    assert not has_child(4)
    catalog.upsert_blocks([BlockRow(key(7), 100, 1.0, 1.0, 1, parent_hash=h(5))])
    assert has_child(5)
    assert catalog.prune_missing(3.0, grace=0.0) == 3  # 1, 2 and 7: old and never seen by a scan
    assert catalog.block_count() == 2 and not has_child(5) and not has_child(4)
    assert wrong_flags(catalog) == 0


def test_supersede_reads_the_branch_index(catalog: Catalog) -> None:
    # A prefix with many children that each have a child (documents under one system prompt), and statistics,
    # as a PostgreSQL catalog in service has them.
    rows = [BlockRow(key(1), 1, 1.0, 1.0, 0)]
    for i in range(2000):
        rows.append(BlockRow(key(10 + 2 * i), 1, 2.0, 2.0, 1, parent_hash=h(1)))
        rows.append(BlockRow(key(11 + 2 * i), 1, 2.0, 2.0, 2, parent_hash=h(10 + 2 * i)))
    catalog.upsert_blocks(rows)
    params = (catalog.namespace_id(NS), h(1), -1, 0, h(99_999), 10.0)
    # SQLite names the index (without statistics it may take ix_blocks_parent, the same columns); PostgreSQL
    # picks it by cost once it knows the table (autovacuum's ANALYZE; unanalysed and this small, the two tie).
    statements = [(catalog._sql.supersede, params), (catalog._sql.heal, params[:4])]
    plans = [testing.statement_plan(catalog, *st) for st in statements] if catalog.dialect == "sqlite" else []
    testing.execute(catalog, "ANALYZE")
    plans += [testing.statement_plan(catalog, *st) for st in statements]
    for plan in plans:
        # The siblings from the branch index; the child probe (for rows whose children came first) from
        # ix_blocks_parent.
        if catalog.dialect == "sqlite":
            assert "SEARCH blocks USING INDEX ix_blocks_branch" in plan.splitlines()[0], plan
            assert "SEARCH c USING" in plan and "ix_blocks_parent" in plan and "SCAN" not in plan, plan
        else:  # no sequential scan, no anti-join: one probe per row read
            assert "on ix_blocks_branch" in plan or "using ix_blocks_branch" in plan, plan
            assert "ix_blocks_parent on blocks c" in plan and "Seq Scan" not in plan and "Join" not in plan, (
                plan
            )


def test_upgrade_from_v6_backfills_has_child(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as catalog:
        catalog.upsert_blocks(
            [
                BlockRow(key(1), 1, 1.0, 1.0, 0),
                BlockRow(key(2), 1, 2.0, 2.0, 1, parent_hash=h(1)),
                BlockRow(key(3), 1, 2.0, 2.0, 1, parent_hash=h(1)),
                BlockRow(key(4), 1, 2.0, 2.0, 2, parent_hash=h(3)),
                BlockRow(key(5, rank=1), 1, 2.0, 2.0, 2, parent_hash=h(2)),  # another rank: no child of 2
            ]
        )
        # Back to v6: no branch index, no columns.
        with testing.connection(catalog, write=True) as conn:
            for ddl in (
                *testing.TO_V7,
                "DROP INDEX ix_blocks_branch",
                "DROP INDEX ix_blocks_old_parent",
                "ALTER TABLE blocks DROP COLUMN has_child",
                "ALTER TABLE blocks DROP COLUMN old_parent",
                "UPDATE kvfs_meta SET value = '6' WHERE key = 'schema_version'",
            ):
                conn.execute(text(ddl))
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION == 9
        assert "ix_blocks_branch" in testing.indexes(catalog, "blocks")
        assert {m[2] for m in marks(catalog)["has_child"]} == {h(1), h(3)}
        # The rule works on the upgraded catalog: a new child of 1 supersedes the leaf 2, not 3 (a child).
        catalog.apply_journal([JournalRecord(RecordKind.STORE, key(6), 10.0, 1, 1, h(1))], {})
        assert {m[2] for m in marks(catalog)["superseded"]} == {h(2)}
        # ... and a re-store behind another parent: 4 moved behind 2 leaves 3 childless.
        catalog.apply_journal([JournalRecord(RecordKind.STORE, key(4), 11.0, 1, 2, h(2))], {})
        assert {m[2] for m in marks(catalog)["has_child"]} == {h(1), h(2)}
        assert wrong_flags(catalog) == 0
