"""S3-FIFO's state in the catalog (schema v8, kvfs.catalog.fifo), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from kvfs.catalog import SCHEMA_VERSION, BlockRow, Catalog, CatalogError, fifo, testing
from kvfs.catalog.models import FIFO_MAIN, FIFO_SMALL
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy import s3fifo_core

NS = "org_model_0123456789ab"


def h(n: int) -> str:
    return f"{n:016x}{n:016x}"  # the first 64 bits name a ghost


def key(n: int) -> BlockKey:
    return BlockKey(NS, None, 0, h(n), "kvfs")


def store(n: int, t: float, pos: int = -1, parent: int | None = None) -> JournalRecord:
    return JournalRecord(RecordKind.STORE, key(n), t, 1, pos, None if parent is None else h(parent))


def access(n: int, t: float) -> JournalRecord:
    return JournalRecord(RecordKind.ACCESS, key(n), t)


def state(catalog: Catalog) -> dict[int, tuple[int, int, int]]:
    """block number -> (queue, position, counter)."""
    with testing.connection(catalog) as conn:
        rows = conn.execute(text("SELECT block_hash, fifo_queue, fifo_seq, fifo_freq FROM blocks")).all()
    return {int(r[0][:16], 16): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def ids(catalog: Catalog) -> dict[int, int]:
    with testing.connection(catalog) as conn:
        return {
            int(r[1][:16], 16): int(r[0]) for r in conn.execute(text("SELECT id, block_hash FROM blocks"))
        }


def queue(catalog: Catalog, main: bool) -> list[int]:
    rows = catalog.stream_fifo_queue(None, main=main)
    try:
        return [int(r.key.block_hash[:16], 16) for r in rows]
    finally:
        rows.close()


def ghosts(catalog: Catalog) -> list[int]:
    return [int(g[3], 16) for g in catalog.fifo_ghost_keys()]


@pytest.fixture
def cat(catalog_url: str):
    catalog = Catalog.open(catalog_url)
    yield catalog
    catalog.close()


def test_max_freq_is_the_policy_s() -> None:
    assert fifo.MAX_FREQ == s3fifo_core.MAX_FREQ


def test_stores_enter_small_in_store_order_tails_first(cat: Catalog) -> None:
    # Two requests in one batch: by time, and within a request the deeper position first.
    cat.apply_journal([store(1, 1.0, 0), store(2, 1.0, 1, 1), store(3, 1.0, 2, 2), store(4, 2.0, 0)], {})
    assert queue(cat, main=False) == [3, 2, 1, 4]
    assert queue(cat, main=True) == []
    seqs = {n: s[1] for n, s in state(cat).items()}
    assert sorted(seqs.values()) == [1, 2, 3, 4]
    # A later batch continues the counter; a store over an existing row keeps its place.
    cat.apply_journal([store(5, 3.0, 0), store(1, 3.0, 0)], {})
    assert queue(cat, main=False) == [3, 2, 1, 4, 5]
    assert state(cat)[5][1] == 5


def test_found_files_get_rows_only_where_no_journal_made_one(cat: Catalog) -> None:
    """The tree watcher's kvfs files (`add_found_blocks`): a journaled row keeps the journal's time, chain
    position, parent and queue place (the file's later mtime would have made the request's head younger than its
    tail, and an upsert first put the store at the small queue's head); a file no record describes gets a row."""
    cat.apply_journal([store(1, 5.0, 0), store(2, 5.0, 1, 1)], {})
    before = state(cat)
    found = [BlockRow(key(n), 7, created=9.0, last_access=9.0) for n in (1, 2, 3)]
    assert cat.add_found_blocks(found) == 3
    rows = {int(k.block_hash[:16], 16): r for k, r in cat.get_blocks([key(1), key(2), key(3)]).items()}
    assert [(rows[n].last_access, rows[n].chain_pos, rows[n].size) for n in (1, 2)] == [
        (5.0, 0, 1),
        (5.0, 1, 1),
    ]
    assert rows[2].parent_hash == h(1)
    assert {n: state(cat)[n] for n in (1, 2)} == before
    assert (rows[3].last_access, rows[3].created, rows[3].size, rows[3].chain_pos) == (9.0, 9.0, 7, -1)
    assert queue(cat, main=False) == [3, 2, 1]  # found: the small queue's head, as a scan's row
    assert cat.add_found_blocks([]) == 0


def test_access_raises_the_counter_up_to_three_with_hits(cat: Catalog) -> None:
    cat.apply_journal([store(1, 1.0), store(2, 1.0)], {})
    cat.apply_journal([access(1, 2.0)], {})
    assert state(cat)[1][2] == 1
    cat.apply_journal([access(1, 3.0), access(1, 3.5), access(1, 4.0), access(2, 4.0)], {})
    assert state(cat)[1][2] == 3 and state(cat)[2][2] == 1
    assert cat.get_blocks([key(1)])[key(1)].hits == 4
    # A block stored and read in the same batch counts its reads.
    cat.apply_journal([store(3, 5.0), access(3, 5.5)], {})
    assert state(cat)[3][2] == 1


def test_a_large_access_batch_counts_like_a_small_one(cat: Catalog) -> None:
    # PostgreSQL goes by COPY from 500 rows on: the same counter.
    n = 600
    cat.apply_journal([store(i, 1.0) for i in range(n)], {})
    cat.apply_journal([access(i, 2.0) for i in range(n) for _ in range(i % 5)], {})
    assert {i: s[2] for i, s in state(cat).items()} == {i: min(3, i % 5) for i in range(n)}


def test_pass_writes_commit_with_the_deletions(cat: Catalog) -> None:
    cat.apply_journal([store(i, float(i)) for i in range(1, 7)], {})
    cat.apply_journal([access(2, 10.0), access(5, 10.0), access(5, 10.5)], {})
    row = ids(cat)
    # The sweep promoted 2, gave 5 a lap (it is in main for this test), evicted 1 and 3 (small) and 4 (main).
    with testing.connection(cat, write=True) as conn:
        conn.execute(text(f"UPDATE blocks SET fifo_queue = {FIFO_MAIN} WHERE id IN ({row[4]}, {row[5]})"))
    writes = fifo.PassWrites(moves=[(row[2], fifo.PROMOTE), (row[5], 1)], ghost_limit=10)
    victims = [row[3], row[1], row[4]]
    assert cat.remove_block_ids(victims, writes=writes, moves=True, ghost_ids=victims) == 3
    after = state(cat)
    assert set(after) == {2, 5, 6}
    assert after[2][0] == FIFO_MAIN and after[2][2] == 0
    assert after[5][0] == FIFO_MAIN and after[5][2] == 1  # 2 uses, one lap
    assert queue(cat, main=True) == [2, 5]  # at main's tail, in the order moved
    assert ghosts(cat) == [3, 1]  # small-queue victims only, in eviction order
    # A ghost stored again enters main (at its position) and is spent; others enter small.
    cat.apply_journal([store(1, 20.0), store(7, 20.0)], {})
    assert state(cat)[1][0] == FIFO_MAIN and state(cat)[7][0] == FIFO_SMALL
    assert queue(cat, main=True)[-1] == 1
    assert ghosts(cat) == [3]


def test_ghosts_are_trimmed_to_the_bound_oldest_first(cat: Catalog) -> None:
    cat.apply_journal([store(i, float(i)) for i in range(1, 9)], {})
    row = ids(cat)
    writes = fifo.PassWrites(ghost_limit=3)
    cat.remove_block_ids([row[1], row[2]], writes=writes, ghost_ids=[row[1], row[2]])
    cat.remove_block_ids([row[3], row[4], row[5]], writes=writes, ghost_ids=[row[3], row[4], row[5]])
    assert ghosts(cat) == [3, 4, 5]
    # Victims of other reasons (TTL, retired: not in ghost_ids) leave none.
    cat.remove_block_ids([row[6]], writes=writes, ghost_ids=[])
    assert ghosts(cat) == [3, 4, 5]


def test_failed_delete_applies_no_moves(cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    cat.apply_journal([store(1, 1.0), store(2, 2.0)], {})
    cat.apply_journal([access(2, 3.0)], {})
    row = ids(cat)
    before = state(cat)

    def broken(conn, sql, params):  # type: ignore[no-untyped-def]
        raise cat._driver_error("disk I/O error")

    monkeypatch.setattr(Catalog, "_executemany_count", staticmethod(broken))
    writes = fifo.PassWrites(moves=[(row[2], fifo.PROMOTE)], ghost_limit=10)
    with pytest.raises(CatalogError):
        cat.remove_block_ids([row[1]], writes=writes, moves=True, ghost_ids=[row[1]])
    assert state(cat) == before and ghosts(cat) == []


def test_upgrade_from_v7_puts_rows_in_lru_order(catalog_url: str) -> None:
    with Catalog.open(catalog_url) as catalog:
        catalog.upsert_blocks(
            [
                BlockRow(key(1), 1, 1.0, 5.0, 7),
                BlockRow(key(2), 1, 1.0, 3.0, 0),
                BlockRow(key(3), 1, 1.0, 3.0, 1),  # same access: the deeper position first
                BlockRow(key(4), 1, 1.0, 9.0, 2),
                BlockRow(key(6), 1, 1.0, 4.0, 0),  # never read: small
            ]
        )
        with testing.connection(catalog, write=True) as conn:
            for n in (1, 2, 3, 4):  # hits 2..5
                conn.execute(text(f"UPDATE blocks SET hits = {n + 1} WHERE block_hash = '{h(n)}'"))
            for ddl in testing.TO_V7:
                conn.execute(text(ddl))
        assert "fifo_ghosts" not in testing.tables(catalog)
    with Catalog.open(catalog_url) as catalog:
        assert catalog.schema_version() == SCHEMA_VERSION == 9
        assert {"ix_blocks_fifo_small", "ix_blocks_fifo_main"} <= testing.indexes(catalog, "blocks")
        # Read rows (all here) in main, LRU order, their reads after the first on the counter.
        assert queue(catalog, main=True) == [3, 2, 1, 4] and queue(catalog, main=False) == [6]
        assert {n: s[2] for n, s in state(catalog).items()} == {1: 1, 2: 2, 3: 3, 4: 3, 6: 0}
        assert ghosts(catalog) == []
        # New stores continue after the migrated positions.
        catalog.apply_journal([store(5, 10.0)], {})
        assert queue(catalog, main=False) == [6, 5]
        assert state(catalog)[5][1] > max(s[1] for n, s in state(catalog).items() if n != 5)


def test_queue_sizes_count_bytes_per_queue_in_scope(cat: Catalog) -> None:
    cat.upsert_blocks([BlockRow(key(1), 10, 1.0, 1.0), BlockRow(key(2), 30, 1.0, 1.0)])
    with testing.connection(cat, write=True) as conn:
        conn.execute(text(f"UPDATE blocks SET fifo_queue = {FIFO_MAIN} WHERE block_hash = '{h(2)}'"))
    ns_id = cat.namespace_id(NS)
    assert ns_id is not None
    assert cat.fifo_queue_sizes(None) == (2, 40, 10, 30)
    assert cat.fifo_queue_sizes([ns_id]) == (2, 40, 10, 30)
    assert cat.fifo_queue_sizes([ns_id + 1]) == (0, 0, 0, 0)
