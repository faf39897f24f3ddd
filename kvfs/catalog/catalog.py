"""The `Catalog` facade: every read and write other parts make, as bulk SQL on SQLite or PostgreSQL.

Hot paths (bulk upserts, journal apply, deletes) go through the driver's `executemany` with positional
tuples, one statement text per dialect: that keeps the per-row cost close to raw `sqlite3` (see
tools/bench/catalog.py).  Everything else uses SQLAlchemy Core or the ORM session.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time as _time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from operator import itemgetter
from typing import Any, Literal

from sqlalchemy import Connection, Engine, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from kvfs import metrics
from kvfs.catalog import fifo, groupings, streams
from kvfs.catalog.engine import create_catalog_engine, default_catalog_url, describe_url, parse_catalog_url
from kvfs.catalog.errors import CatalogError, CatalogUnavailable, RootMismatchError
from kvfs.catalog.models import MARKABLE, NO_RANK, ORPHAN, SUPERSEDED, Block, Namespace
from kvfs.catalog.records import (
    ApplyStats,
    BlockRow,
    Candidate,
    EvictionEntry,
    GroupUsage,
    NamespaceInfo,
    NamespaceUsage,
    Usage,
)
from kvfs.catalog.schema import SCHEMA_VERSION, ensure_schema, read_schema_version
from kvfs.catalog.streams import BlockClass
from kvfs.layout import BlockKey, ensure_root_id, model_of_namespace, read_root_id, root_id_path

_log = logging.getLogger("kvfs.catalog")

# Journal record kinds (kvfs.journal.RecordKind is an IntEnum with these values; compared as ints so the
# catalog does not import the journal module).
_STORE = 1
_ACCESS = 2

_KEY_COLS = "namespace_id, rank, grp, block_hash, fmt"
_ROOT_ID_KEY = "root_id"  # kvfs_meta: the id of the root this catalog belongs to (<root>/.kvfs/root-id)
UPSERT_CHUNK = 20_000
# PostgreSQL: from this many rows on, COPY into a temp table and merge with one INSERT ... SELECT (several
# times faster than executemany, which still costs a round trip's worth of work per row).
PG_COPY_MIN_ROWS = 500
_BLOCK_COLS = f"{_KEY_COLS}, size, created, last_access, hits, chain_pos, state, seen, parent_hash"
_INSERT_COLS = f"{_BLOCK_COLS}, has_child, fifo_seq"
# A row of the block's namespace, rank and group that has it as parent (`ix_blocks_parent`, one probe), as a
# scalar subquery (`... IS NULL`: no child): PostgreSQL would turn a NOT EXISTS into an anti-join, which it may
# plan as a sequential scan of the table; a scalar subquery stays one probe per row the statement reads.
# SQLite names the index: with statistics (ANALYZE) it may prefer the unique key's (namespace, rank, group)
# prefix, a scan of the namespace.
_CHILD_OF = (
    "(SELECT 1 FROM blocks c{indexed_by} WHERE c.namespace_id = blocks.namespace_id "
    "AND c.parent_hash = blocks.block_hash AND c.rank = blocks.rank AND c.grp = blocks.grp LIMIT 1)"
)
# A scan never moves a kvfs block's last access: its writer journals every store and read with the request's
# time (connector/chain.py), and the file's mtime is later (when it finished); raised to it at every rescan, a
# chain's head could become younger than its tail, and a rescan rewrote every unread row.  Other formats keep
# no journal: their file times are all there is.
_LAST_ACCESS = "{greatest}(blocks.last_access, excluded.last_access)"
_SCANNED_LAST_ACCESS = f"CASE WHEN blocks.fmt = 'kvfs' THEN blocks.last_access ELSE {_LAST_ACCESS} END"


def _upsert_sql(head: str, greatest: str, last_access: str) -> str:
    """The blocks upsert after `head` (its INSERT ... VALUES or SELECT), with `last_access` for a row there."""
    return (
        f"{head} ON CONFLICT ({_KEY_COLS}) DO UPDATE SET size = excluded.size, "
        f"last_access = {last_access.format(greatest=greatest)}, "
        "hits = blocks.hits + excluded.hits, "
        "chain_pos = CASE WHEN excluded.chain_pos >= 0 THEN excluded.chain_pos ELSE blocks.chain_pos END, "
        f"seen = {greatest}(blocks.seen, excluded.seen), "
        "parent_hash = COALESCE(excluded.parent_hash, blocks.parent_hash), "
        "has_child = blocks.has_child OR excluded.has_child, "
        f"old_parent = {_OLD_PARENT}"
    )


_PG_STAGE = "kvfs_blocks_stage"
_PG_ACCESS_STAGE = "kvfs_access_stage"
# A store over a row that records another parent: the row's first parent in this transaction is kept in
# `old_parent`, so `Catalog._upsert_params` can clear that parent's `has_child` (no trigger: SQLite runs a row
# trigger's bookkeeping for every row an upsert inserts, ~20% more CPU per store).
_OLD_PARENT = (
    "CASE WHEN excluded.parent_hash IS NOT NULL AND blocks.parent_hash IS NOT NULL "
    "AND excluded.parent_hash != blocks.parent_hash THEN COALESCE(blocks.old_parent, blocks.parent_hash) "
    "ELSE blocks.old_parent END"
)
KEY_CHUNK = 500
BlockOrder = Literal["lru", "mru", "created", "size"]
_ORDER_SQL: dict[str, str] = {
    "lru": "b.last_access ASC, b.chain_pos DESC, b.id ASC",
    "mru": "b.last_access DESC, b.chain_pos ASC, b.id DESC",
    "created": "b.created ASC, b.id ASC",
    "size": "b.size DESC, b.id ASC",
}
_KEY_WHERE = "namespace_id = {p} AND rank = {p} AND grp = {p} AND block_hash = {p} AND fmt = {p}"


class _Sql:
    """The hot statements in one dialect's positional parameter style."""

    def __init__(self, dialect: str) -> None:
        p = "?" if dialect == "sqlite" else "%s"
        greatest = "max" if dialect == "sqlite" else "GREATEST"
        child_of = _CHILD_OF.format(indexed_by=" INDEXED BY ix_blocks_parent" if dialect == "sqlite" else "")
        # `has_child` of an inserted row: TRUE when a row of the same batch has it as parent (the 14th
        # parameter, computed in Python); an existing row keeps a TRUE.  Children already there (a block stored
        # again after its removal, or after its children) are found later, by `heal`: no probe per row here.
        values = f"INSERT INTO blocks ({_INSERT_COLS}) VALUES ({', '.join([p] * 15)})"
        self.upsert = _upsert_sql(values, greatest, _LAST_ACCESS)
        self.upsert_scanned = _upsert_sql(values, greatest, _SCANNED_LAST_ACCESS)
        # Rows for files found on disk that a writer's journal may already describe: the journal's row stays.
        self.insert_new = f"{values} ON CONFLICT ({_KEY_COLS}) DO NOTHING"
        # The scan's pair (SQLite): mark every file seen, touching no indexed column, then rewrite only the
        # rows whose size changed or whose file times are newer.  SQLite re-indexes every index that holds a
        # column named in SET, whatever the values, so the one-statement upsert costs ~3x more on a rescan.
        self.scan_mark = (
            f"INSERT INTO blocks ({_BLOCK_COLS}) "
            f"VALUES ({', '.join([p] * 13)}) "
            f"ON CONFLICT ({_KEY_COLS}) DO UPDATE SET seen = {greatest}(blocks.seen, excluded.seen)"
        )
        self.scan_refresh = (
            f"UPDATE blocks SET size = {p}, "
            f"last_access = CASE WHEN fmt = 'kvfs' THEN last_access ELSE {greatest}(last_access, {p}) END "
            f"WHERE {_KEY_WHERE.format(p=p)} AND (size != {p} OR (fmt != 'kvfs' AND last_access < {p}))"
        )
        # S3-FIFO's counter rises with `hits`, in the same UPDATE.  SQLite reads the count again as `?2`
        # (a bare `?` after it is the 3rd); PostgreSQL's executemany (small batches: larger ones go by COPY)
        # is given it twice (`access_params`).
        freq = (
            f"min({fifo.MAX_FREQ}, fifo_freq + ?2)"
            if dialect == "sqlite"
            else f"LEAST({fifo.MAX_FREQ}, fifo_freq + %s)"
        )
        self.access = (
            f"UPDATE blocks SET last_access = {greatest}(last_access, {p}), hits = hits + {p}, "
            f"fifo_freq = {freq} WHERE {_KEY_WHERE.format(p=p)}"
        )
        self.access_twice = dialect != "sqlite"
        self.orphan_id = f"UPDATE blocks SET orphan = TRUE WHERE id = {p}"
        # Rows used again (accessed, or stored over) since `t` had their chain sent whole: no longer orphans.
        # One range scan of the orphans' partial index per journal batch, instead of a SET per access.
        self.adopt = f"UPDATE blocks SET orphan = FALSE WHERE {ORPHAN} AND last_access >= {p}"
        # A superseded row used again (or stored over) since `t` is live after all: the same range scan.
        self.unsupersede = f"UPDATE blocks SET superseded = FALSE WHERE {SUPERSEDED} AND last_access >= {p}"
        # A parent that got a child is no leaf (a writer may store behind a block it did not read from files),
        # and has a child.  Parameters: the parent's namespace, rank, group and hash.
        key4 = f"namespace_id = {p} AND rank = {p} AND grp = {p} AND block_hash = {p}"
        self.extended = (
            f"UPDATE blocks SET superseded = FALSE, has_child = TRUE WHERE ({SUPERSEDED} OR NOT has_child) "
            f"AND {key4}"
        )
        # The same for rows given to upsert_blocks (no superseded bookkeeping there).
        self.has_child = f"UPDATE blocks SET has_child = TRUE WHERE NOT has_child AND {key4}"
        # A parent whose child went: childless unless another child is left (one probe).
        self.unchild = (
            f"UPDATE blocks SET has_child = FALSE WHERE has_child AND {key4} AND {child_of} IS NULL"
        )
        # (`+last_access`: no index on it, so SQLite looks siblings up by parent, not the namespace's LRU range.)
        # The older never-read, childless siblings of a block just stored: the branch a conversation left
        # behind.  `ix_blocks_branch` holds only the rows the rule could mark (MARKABLE, whose terms the WHERE
        # repeats: a row with `has_child` has a child), so the statement reads the siblings it marks, the new
        # block, newer unread siblings and rows whose children came first (`heal` then flags these), whatever
        # the parent's other children.  Parameters: the new block's namespace, parent, rank, group, hash and
        # store time.  SQLite names the index: without statistics it may rate `ix_blocks_parent` (the same
        # leading columns) as good, which visits every sibling.
        branch = f"blocks{' INDEXED BY ix_blocks_branch' if dialect == 'sqlite' else ''}"
        siblings = f"namespace_id = {p} AND parent_hash = {p} AND rank = {p} AND grp = {p} AND {MARKABLE}"
        self.supersede = (
            f"UPDATE {branch} SET superseded = TRUE WHERE {siblings} AND block_hash != {p} "
            f"AND +last_access < {p} AND {child_of} IS NULL"
        )
        # After it, per parent: the rows of the same range with children get their flag, so each is read once.
        self.heal = f"UPDATE {branch} SET has_child = TRUE WHERE {siblings} AND {child_of} IS NOT NULL"
        # Rows an upsert moved behind another parent (`ix_blocks_old_parent`, empty between transactions).
        self.moved = "SELECT namespace_id, rank, grp, old_parent FROM blocks WHERE old_parent IS NOT NULL"
        self.settle_moved = "UPDATE blocks SET old_parent = NULL WHERE old_parent IS NOT NULL"
        self.delete = f"DELETE FROM blocks WHERE {_KEY_WHERE.format(p=p)}"
        self.delete_id = f"DELETE FROM blocks WHERE id = {p}"
        self.offset = (
            f'INSERT INTO journal_offsets (segment, "offset", updated) VALUES ({p}, {p}, {p}) '
            f'ON CONFLICT (segment) DO UPDATE SET "offset" = {greatest}(journal_offsets."offset", '
            'excluded."offset"), updated = excluded.updated'
        )
        self.forget = f"DELETE FROM journal_offsets WHERE segment = {p}"


def _in_key_order(rows: Iterable[tuple[Any, ...]], at: int = 0) -> list[tuple[Any, ...]]:
    """`rows` sorted by the unique key's leading columns (namespace id, rank, group, hash: values `at` to
    `at` + 3), stably.  Bucketed by (namespace, rank, group), then each bucket sorted by hash: strings compare
    in C, while 4-tuple keys whose first three values tie fall back to generic comparisons (2.5x slower at
    50,000 rows, ~0.1 s of a 200,000-record ingest)."""
    buckets: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    end = at + 3
    for r in rows:
        bucket = buckets.get(r[at:end])
        if bucket is None:
            buckets[r[at:end]] = [r]
        else:
            bucket.append(r)
    by_hash = itemgetter(end)
    out: list[tuple[Any, ...]] = []
    for prefix in sorted(buckets):
        out += sorted(buckets[prefix], key=by_hash)
    return out


def _merge_duplicate_keys(params: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One tuple per key (a single INSERT ... SELECT may not touch a row twice), merged like the upsert does."""
    merged: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for p in params:
        k = p[:5]
        old = merged.get(k)
        if old is None:
            merged[k] = p
        else:
            merged[k] = (
                *k,
                p[5],
                old[6],  # created: the first one, as an upsert keeps the existing row's
                max(old[7], p[7]),
                old[8] + p[8],
                p[9] if p[9] >= 0 else old[9],
                p[10],
                max(old[11], p[11]),
                p[12] if p[12] is not None else old[12],
                old[13] or p[13],
                old[14],  # fifo_seq: the first store's position
            )
    return list(merged.values()) if len(merged) != len(params) else params


def _child_keys(params: Sequence[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """(namespace id, rank, group, hash) of the parents the `_block_params` tuples record, as the upsert leaves
    them: a key given twice keeps its last recorded parent."""
    last: dict[tuple[Any, ...], str] = {}
    for p in params:
        if p[12] is not None:
            last[p[:5]] = p[12]
    return {(k[0], k[1], k[2], parent) for k, parent in last.items()}


def _flagged(params: Sequence[tuple[Any, ...]], parents: set[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`_block_params` tuples with their `has_child` (the 14th value: TRUE for the `parents` of the batch) and
    `fifo_seq` 0 (rows given whole, found by a scan: the small queue's head)."""
    return [(*p, p[:4] in parents, 0) for p in params]


def _stage(cur: Any, table: str, columns: str, names: str, params: list[tuple[Any, ...]]) -> None:
    """COPY `params` (columns `names`) into the session temp table `table` (made on first use, emptied at each
    commit): the bulk path of PostgreSQL's journal batches."""
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS")
    with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for p in params:
            copy.write_row(p)


def _pg_copy_upsert(conn: Connection, params: list[tuple[Any, ...]], scanned: bool) -> None:
    """COPY the rows (`_flagged` tuples) into a session temp table, then merge them with the same conflict rules
    as `_Sql.upsert` (`scanned`: `_Sql.upsert_scanned`)."""
    params = _merge_duplicate_keys(params)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        _stage(
            cur,
            _PG_STAGE,
            "namespace_id integer, rank integer, grp integer, block_hash text, fmt text, size bigint, "
            "created double precision, last_access double precision, hits bigint, chain_pos integer, "
            "state integer, seen double precision, parent_hash text, has_child boolean, fifo_seq bigint",
            _INSERT_COLS,
            params,
        )
        head = f"INSERT INTO blocks ({_INSERT_COLS}) SELECT {_INSERT_COLS} FROM {_PG_STAGE}"
        cur.execute(_upsert_sql(head, "GREATEST", _SCANNED_LAST_ACCESS if scanned else _LAST_ACCESS))
        cur.execute(f"TRUNCATE {_PG_STAGE}")


def _pg_copy_access(conn: Connection, params: list[tuple[Any, ...]]) -> int:
    """`_Sql.access` for many rows on PostgreSQL: COPY them (one per key) into a session temp table and update
    the blocks they name with one UPDATE ... FROM (executemany costs a round trip's worth of server work per
    row: 40 us, over half of PostgreSQL ingest).  Returns the rows updated (keys matched)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        _stage(
            cur,
            _PG_ACCESS_STAGE,
            "last_access double precision, hits bigint, namespace_id integer, rank integer, grp integer, "
            "block_hash text, fmt text",
            f"last_access, hits, {_KEY_COLS}",
            params,
        )
        # One index probe per staged row, as executemany does, whatever the statistics say: a hash join reads the
        # whole table (1.5 s against 0.85 s for 50,000 rows of a 1M-row catalog; far worse for a small batch
        # against stale statistics); no JIT for a plan this simple.  Reset after it.
        cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL jit = off")
        cur.execute(
            f"UPDATE blocks SET last_access = GREATEST(blocks.last_access, s.last_access), "
            f"hits = blocks.hits + s.hits, fifo_freq = LEAST({fifo.MAX_FREQ}, blocks.fifo_freq + s.hits) "
            f"FROM {_PG_ACCESS_STAGE} s WHERE blocks.namespace_id = s.namespace_id "
            "AND blocks.rank = s.rank AND blocks.grp = s.grp AND blocks.block_hash = s.block_hash "
            "AND blocks.fmt = s.fmt"
        )
        matched = max(cur.rowcount, 0)
        cur.execute(f"RESET enable_hashjoin; RESET enable_mergejoin; RESET jit; TRUNCATE {_PG_ACCESS_STAGE}")
    return matched


_CREATED, _CHAIN_POS = itemgetter(6), itemgetter(9)


def _journal_rows(
    stores: Mapping[BlockKey, list[Any]], ns_ids: Mapping[str, int], first_seq: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The upsert rows (`_flagged` tuples), `_Sql.extended` and `_Sql.supersede` parameters for the stores of
    one journal batch (`stores`: key -> [size, created, last access, chain position, parent], one per key).

    `has_child` is TRUE for the stored blocks that are a parent of another store of the batch.  A parent stored
    in the same batch is new (its only children are in the batch too) and touched (so never superseded), so
    only stores whose parent came from an earlier batch, and stores that share a parent within the batch, need
    statements: about one per request instead of one per block.  Built straight from `stores` (no BlockRow, no
    `_block_params` tuple rebuilt with its flag): Python work per store is a sizable share of ingest.

    `fifo_seq` (the 15th value): S3-FIFO positions from `first_seq` on, in store order (time, then the deeper
    chain position first, so a chain's tail leaves a queue before its head)."""
    params = []
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # parent -> the first store that records it
    more: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}  # parent -> all its stores, when several
    for key, (size, created, last_access, chain_pos, parent) in stores.items():
        ns_id = ns_ids[key.namespace]
        rank = NO_RANK if key.rank is None else key.rank
        p = (
            ns_id,
            rank,
            key.group,
            key.block_hash,
            key.fmt,
            size,
            created,
            last_access,
            0,
            chain_pos,
            0,
            0.0,
            parent,
        )
        params.append(p)
        if parent is not None:
            parent_key = (ns_id, rank, key.group, parent)
            other = first.setdefault(parent_key, p)
            if other is not p:
                more.setdefault(parent_key, [other]).append(p)
    # Store order: two stable C-keyed sorts (deeper position first, then time) cost a fraction of one sort
    # on a Python key; the upsert re-sorts the rows by key anyway.
    params.sort(key=_CHAIN_POS, reverse=True)
    params.sort(key=_CREATED)
    stored = set()
    rows = []
    for seq, p in enumerate(params, first_seq):
        k = p[:4]
        stored.add(k)
        rows.append((*p, k in first, seq))
    extended, supersede = [], []
    for parent_key, p in first.items():
        children = more.get(parent_key)
        if parent_key not in stored:
            extended.append(parent_key)
        elif children is None:
            continue
        for c in children or (p,):
            supersede.append((c[0], c[12], c[1], c[2], c[3], c[7]))
    return rows, extended, supersede


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _rank_in(rank: int | None) -> int:
    return NO_RANK if rank is None else rank


def _rank_out(rank: int) -> int | None:
    return None if rank == NO_RANK else rank


class Catalog:
    """Block catalog on SQLite (local file, WAL) or PostgreSQL.  Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine, *, description: str) -> None:
        self._engine = engine
        self.description = description
        self.dialect: str = engine.dialect.name
        self._sql = _Sql(self.dialect)
        self._ns_ids: dict[str, int] = {}
        self._ns_lock = threading.Lock()
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # Told of every batch of journal records once applied (adaptive's shadows learn from the traffic).
        self._journal_listeners: list[Callable[[Sequence[Any]], None]] = []

    # --- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, url: str | None = None, *, root: str | os.PathLike[str] | None = None, create: bool = True
    ) -> Catalog:
        """Open (creating or upgrading the schema) the catalog at `url` (default: `default_catalog_url()`).

        `root` is the kvfs root: a SQLite file inside it is refused, and a catalog bound to another root too.
        `create=False` (read-only commands) never creates a catalog, its tables or its root binding: a missing
        one is a CatalogError.  Raises CatalogError with a one-line reason.
        """
        parsed = parse_catalog_url(url if url is not None else default_catalog_url())
        engine = create_catalog_engine(parsed, root=root, create=create)
        catalog = cls(engine, description=describe_url(parsed))
        try:
            if create:
                with catalog._write("open") as conn:
                    ensure_schema(conn)
            else:
                with catalog._read("open") as conn:
                    found = read_schema_version(conn)
                if found is None:
                    raise CatalogError(
                        f"{catalog.description} holds no kvfs catalog yet: run `kvfs scan` first, or pass --catalog"
                    )
                if found < SCHEMA_VERSION:  # reading needs the current schema: upgrade (never create)
                    with catalog._write("open") as conn:
                        ensure_schema(conn)
            if root is not None:
                catalog._bind_root(root, bind=create)
        except CatalogUnavailable as exc:
            engine.dispose()
            raise CatalogUnavailable(
                f"cannot prepare catalog {catalog.description}: {exc.detail}", op="open"
            ) from exc
        except CatalogError:
            engine.dispose()
            raise
        return catalog

    def _bind_root(self, root: str | os.PathLike[str], *, bind: bool = True) -> None:
        """Refuse a catalog that belongs to another root; bind an unbound one to this root.

        The root's id lives in `<root>/.kvfs/root-id` (created on first use), the catalog's in kvfs_meta.  A
        catalog used with the wrong root would see none of its files there and drop every row as gone."""
        if not os.path.isdir(root):
            return  # commands that need the root report it missing themselves
        with self._read("root_id") as conn:
            bound = conn.execute(
                text("SELECT value FROM kvfs_meta WHERE key = :k"), {"k": _ROOT_ID_KEY}
            ).scalar()
        if bound is None and not bind:
            return  # read-only: check a binding, never make one
        here = read_root_id(root) if bound is not None else ensure_root_id(root)
        if bound is not None:
            if here != bound:
                metrics.CATALOG_ROOT_MISMATCH.inc()
                raise RootMismatchError(
                    f"catalog {self.description} belongs to another root (root id {bound}); {root} has "
                    + (f"root id {here}" if here else f"no root id ({root_id_path(root)})")
                    + ": use this root's own catalog (or a new one) with --catalog"
                )
            return
        if here is None:
            return  # a read-only root without an id: nothing to bind to
        with self._write("root_id") as conn:
            conn.execute(
                text("INSERT INTO kvfs_meta (key, value) VALUES (:k, :v) ON CONFLICT (key) DO NOTHING"),
                {"k": _ROOT_ID_KEY, "v": here},
            )
            bound = conn.execute(
                text("SELECT value FROM kvfs_meta WHERE key = :k"), {"k": _ROOT_ID_KEY}
            ).scalar()
        if bound != here:  # another root bound it between our read and our write
            self._bind_root(root)

    def root_id(self) -> str | None:
        """The id of the root this catalog belongs to (None: not bound yet)."""
        with self._read("root_id") as conn:
            value = conn.execute(
                text("SELECT value FROM kvfs_meta WHERE key = :k"), {"k": _ROOT_ID_KEY}
            ).scalar()
        return None if value is None else str(value)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.description})"

    # The engine stays private: SQL lives in this package (streams, ghosts, groupings use the helpers below;
    # tests use kvfs.catalog.testing).

    @contextlib.contextmanager
    def _failures(self, op: str) -> Iterator[None]:
        """Database errors (SQLAlchemy's and the driver's own, e.g. from a raw COPY) are counted in
        `kvfs_catalog_errors_total{op}` and re-raised as CatalogUnavailable with their first line."""
        try:
            yield
        except (SQLAlchemyError, self._driver_error) as exc:
            metrics.CATALOG_ERRORS.labels(op=op).inc()
            raise CatalogUnavailable.of(op, exc) from exc

    @contextlib.contextmanager
    def _write(self, op: str) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so it waits for the lock instead of failing later)."""
        with self._failures(op), self._engine.connect() as conn:
            conn.execution_options(kvfs_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self, op: str) -> Iterator[Connection]:
        """A read transaction (one snapshot); also what streams hold while they are consumed."""
        with self._failures(op), self._engine.connect() as conn, conn.begin():
            yield conn

    def schema_version(self) -> int:
        with self._read("schema_version") as conn:
            version = read_schema_version(conn)
        assert version is not None
        return version

    # --- namespaces --------------------------------------------------------------------------------------

    def ensure_namespace(
        self,
        name: str,
        *,
        model: str | None = None,
        fingerprint: str | None = None,
        fmt: str | None = None,
    ) -> int:
        """Id of namespace `name`, creating it; fills model/fingerprint/fmt where still unknown."""
        known = self._ns_ids.get(name)
        if known is not None and model is None and fingerprint is None and fmt is None:
            return known
        query = select(Namespace.id, Namespace.model, Namespace.fingerprint, Namespace.fmt).where(
            Namespace.name == name
        )
        with self._write("ensure_namespace") as conn:
            row = conn.execute(query).first()
            if row is None:
                # Another process may create it concurrently (PostgreSQL): insert-or-nothing, then read it back.
                dialect_insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
                conn.execute(
                    dialect_insert(Namespace)
                    .values(
                        name=name,
                        model=model if model is not None else model_of_namespace(name),
                        fingerprint=fingerprint,
                        fmt=fmt,
                        created=_time.time(),
                    )
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                row = conn.execute(query).one()
            ns_id = row.id
            changes: dict[str, Any] = {}
            if model is not None and row.model != model:
                changes["model"] = model
            if fingerprint is not None and row.fingerprint is None:
                changes["fingerprint"] = fingerprint
            if fmt is not None and row.fmt is None:
                changes["fmt"] = fmt
            if changes:
                conn.execute(Namespace.__table__.update().where(Namespace.id == ns_id).values(**changes))
        self._remember_namespace(name, ns_id)
        return ns_id

    def _remember_namespace(self, name: str, ns_id: int) -> None:
        with self._ns_lock:
            self._ns_ids[name] = ns_id

    def namespace_id(self, name: str) -> int | None:
        """Id of an existing namespace (no creation), None if unknown."""
        known = self._ns_ids.get(name)
        if known is not None:
            return known
        with self._read("namespace_id") as conn:
            ns_id = conn.execute(select(Namespace.id).where(Namespace.name == name)).scalar()
        if ns_id is not None:
            self._remember_namespace(name, ns_id)
        return ns_id

    def _namespace_ids(self, names: Iterable[str], *, create: bool) -> dict[str, int]:
        result: dict[str, int] = {}
        missing: list[str] = []
        for name in set(names):
            ns_id = self._ns_ids.get(name)
            if ns_id is None:
                missing.append(name)
            else:
                result[name] = ns_id
        for name in missing:
            ns_id = self.ensure_namespace(name) if create else self.namespace_id(name)
            if ns_id is not None:
                result[name] = ns_id
        return result

    def namespaces(self) -> list[NamespaceInfo]:
        t = Namespace.__table__.c
        with self._read("namespaces") as conn:
            rows = conn.execute(
                select(t.id, t.name, t.model, t.fingerprint, t.created, t.fmt).order_by(t.name)
            ).all()
        infos = [
            NamespaceInfo(
                id=r.id,
                name=r.name,
                model=r.model,
                fingerprint=r.fingerprint,
                created=r.created,
                fmt=r.fmt,
            )
            for r in rows
        ]
        for info in infos:
            self._remember_namespace(info.name, info.id)
        return infos

    # --- blocks: bulk writes -----------------------------------------------------------------------------

    def _block_params(self, rows: Sequence[BlockRow], seen: float) -> list[tuple[Any, ...]]:
        ids = self._ns_ids
        if any(row.key.namespace not in ids for row in rows):
            self._namespace_ids((row.key.namespace for row in rows), create=True)
        return [
            (
                ids[(k := row.key).namespace],
                NO_RANK if k.rank is None else k.rank,
                k.group,
                k.block_hash,
                k.fmt,
                row.size,
                row.created,
                row.last_access,
                row.hits,
                row.chain_pos,
                0,
                seen,
                row.parent_hash,
            )
            for row in rows
        ]

    def upsert_blocks(self, rows: Iterable[BlockRow], *, seen: float = 0.0) -> int:
        """Insert new blocks; existing ones get the new size, last_access = max(old, new), hits added.

        `seen` is the scan generation (the scan's start time) for rows coming from a scan; see prune_missing.
        One transaction; returns the number of rows given.
        """
        rows = rows if isinstance(rows, list) else list(rows)
        # Namespaces are created in their own transactions, before the write lock is taken.
        self._namespace_ids({row.key.namespace for row in rows}, create=True)
        total = 0
        with self._write("upsert_blocks") as conn:
            for chunk in _chunks(rows, UPSERT_CHUNK):
                params = self._block_params(chunk, seen)
                parents = _child_keys(params)
                self._upsert_params(conn, _flagged(params, parents))
                parents.difference_update(p[:4] for p in params)  # those of the chunk are flagged
                if parents:
                    conn.exec_driver_sql(self._sql.has_child, sorted(parents))
                total += len(params)
        metrics.CATALOG_ROWS_UPSERTED.inc(total)
        return total

    def add_found_blocks(self, rows: Iterable[BlockRow]) -> int:
        """Rows for block files found on disk whose writer journals them (the tree watcher's kvfs files, after the
        journal had time to arrive): inserted where the catalog has no row for the key (a writer killed before
        its journal flush), at the small queue's head as a scan's; a row there is left exactly as its journal made
        it (times, chain position, queue place).  One transaction; returns the number of rows given."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return 0
        self._namespace_ids({row.key.namespace for row in rows}, create=True)
        with self._write("add_found_blocks") as conn:
            for chunk in _chunks(rows, UPSERT_CHUNK):
                # No parents recorded: no `has_child` to set on others; their own is healed when read.
                conn.exec_driver_sql(
                    self._sql.insert_new, _in_key_order(_flagged(self._block_params(chunk, 0.0), set()))
                )
        metrics.CATALOG_ROWS_UPSERTED.inc(len(rows))
        return len(rows)

    def upsert_scanned(
        self,
        batches: Sequence[tuple[str, int | None, Sequence[tuple[int, str, str, int, float, float]]]],
        *,
        seen: float,
    ) -> int:
        """`upsert_blocks` for the scan's compact rows: (namespace, rank, [(group, hash, fmt, size, created,
        last_access), ...]) groups, without building a BlockKey per file.  One transaction."""
        ns_ids = self._namespace_ids({ns for ns, _, _ in batches}, create=True)
        params = [
            (ns_id, r, g, h, f, size, created, last, 0, -1, 0, seen, None)
            for ns, rank, found in batches
            for ns_id, r in ((ns_ids[ns], _rank_in(rank)),)
            for g, h, f, size, created, last in found
        ]
        params = _in_key_order(params)
        with self._write("upsert_scanned") as conn:
            for chunk in _chunks(params, UPSERT_CHUNK):
                if self.dialect == "sqlite":
                    conn.exec_driver_sql(self._sql.scan_mark, chunk)
                    conn.exec_driver_sql(
                        self._sql.scan_refresh, [(p[5], p[7], *p[:5], p[5], p[7]) for p in chunk]
                    )
                else:
                    self._upsert_params(conn, _flagged(chunk, set()), scanned=True)
        metrics.CATALOG_ROWS_UPSERTED.inc(len(params))
        return len(params)

    def add_journal_listener(self, listener: Callable[[Sequence[Any]], None]) -> None:
        """Call `listener(records)` after each `apply_journal` commits, with the records in the order given
        (whoever ingests: the evictor, `kvfs gc`, a replay).  Added once however often it is given."""
        if listener not in self._journal_listeners:
            self._journal_listeners.append(listener)

    def remove_journal_listener(self, listener: Callable[[Sequence[Any]], None]) -> None:
        if listener in self._journal_listeners:
            self._journal_listeners.remove(listener)

    def apply_journal(self, records: Sequence[Any], offsets: Mapping[str, int]) -> ApplyStats:
        """Apply journal records and save the reader's new offsets, in ONE transaction.

        STORE: upsert (created = record time if new, last_access = max).  ACCESS: last_access = max, hits += 1;
        an access to a block the catalog does not know is ignored and counted.  Prefix bookkeeping: rows used
        again lose `orphan` and `superseded`; a stored block with a recorded parent marks its older siblings
        that were never read and have no children `superseded` (a conversation's next turn replaces the
        previous turn's last block with a longer one, and a regenerated answer leaves the old one behind).
        """
        # key -> [size, created, last access, chain position, parent]: merged in place, as the upsert would.
        stores: dict[BlockKey, list[Any]] = {}
        accesses: dict[BlockKey, list[Any]] = {}  # key -> [max time, count]
        # (`setdefault`: one hash of the key per record; BlockKey's hash is a Python function.)
        for rec in records:
            kind = rec.kind  # RecordKind, an IntEnum: compared as an int
            if kind == _STORE:
                when = rec.time
                new = [rec.size, when, when, rec.chain_pos, rec.parent]
                prev = stores.setdefault(rec.key, new)
                if prev is not new:
                    prev[0] = rec.size
                    if when < prev[1]:
                        prev[1] = when
                    if when > prev[2]:
                        prev[2] = when
                    if rec.chain_pos >= 0:
                        prev[3] = rec.chain_pos
                    if rec.parent is not None:
                        prev[4] = rec.parent
            elif kind == _ACCESS:
                new = [rec.time, 1]
                acc = accesses.setdefault(rec.key, new)
                if acc is not new:
                    if rec.time > acc[0]:
                        acc[0] = rec.time
                    acc[1] += 1
        upsert_rows: list[tuple[Any, ...]] = []
        extended: list[tuple[Any, ...]] = []
        supersede: list[tuple[Any, ...]] = []
        if stores:
            ns_ids = self._ns_ids
            if any(key.namespace not in ns_ids for key in stores):
                self._namespace_ids({key.namespace for key in stores}, create=True)
        ns_ids = self._namespace_ids({key.namespace for key in accesses}, create=False)
        access_keys: list[BlockKey] = []
        access_params = []
        unknown = 0
        for key, (when, count) in accesses.items():
            ns_id = ns_ids.get(key.namespace)
            if ns_id is None:
                unknown += count
                continue
            access_keys.append(key)
            rank = NO_RANK if key.rank is None else key.rank
            access_params.append((when, count, ns_id, rank, key.group, key.block_hash, key.fmt))
        now = _time.time()
        offset_params = [(name, int(off), now) for name, off in offsets.items()]
        with self._write("apply_journal") as conn:
            if stores:
                # S3-FIFO: positions follow the tier's counter (read under the write lock); new rows whose key
                # is a FIFO ghost enter main.
                top_id, next_seq, any_ghost = fifo.before_stores(conn)
                upsert_rows, extended, supersede = _journal_rows(stores, self._ns_ids, next_seq)
                self._upsert_params(conn, upsert_rows)  # parents outside the batch: `extended` below
                if any_ghost:
                    fifo.ghost_returns(conn, top_id)
            if access_params:
                access_params = _in_key_order(access_params, 2)  # key order, as for upserts
                if self.dialect == "postgresql" and len(access_params) >= PG_COPY_MIN_ROWS:
                    matched = _pg_copy_access(conn, access_params)
                elif self._sql.access_twice:
                    matched = self._executemany_count(
                        conn, self._sql.access, [(p[0], p[1], *p[1:]) for p in access_params]
                    )
                else:
                    matched = self._executemany_count(conn, self._sql.access, access_params)
                if matched < len(access_params):
                    # rowcount says how many keys matched, not which: look the rest up to count their records.
                    present = self._get_blocks(conn, access_keys)
                    unknown += sum(accesses[k][1] for k in access_keys if k not in present)
            if upsert_rows or access_params:
                oldest = min(
                    min((v[2] for v in stores.values()), default=math.inf),
                    min((p[0] for p in access_params), default=math.inf),
                )
                # Every row this batch touched now has last_access >= `oldest`.  (So may an orphan whose
                # parent went after it was last used, which the evictor's min_age makes rare.)
                conn.exec_driver_sql(self._sql.adopt, (oldest,))
                conn.exec_driver_sql(self._sql.unsupersede, (oldest,))
            if extended:
                conn.exec_driver_sql(self._sql.extended, extended)
            if supersede:
                marked = self._executemany_count(conn, self._sql.supersede, supersede)
                metrics.CATALOG_CHAIN_MARKS.labels(mark="superseded").inc(marked)
                conn.exec_driver_sql(self._sql.heal, sorted({p[:4] for p in supersede}))
            if offset_params:
                conn.exec_driver_sql(self._sql.offset, offset_params)
        for listener in list(self._journal_listeners) if records else ():
            try:
                listener(records)
            except Exception:  # noqa: BLE001 - the records are applied; a listener's failure is its own
                metrics.POLICY_BOOKKEEPING_ERRORS.labels(op="observe").inc()
                _log.exception("journal listener %r failed", listener)
        n_access = sum(c for _, c in accesses.values())
        if unknown:
            metrics.CATALOG_UNKNOWN_ACCESSES.inc(unknown)
        metrics.CATALOG_ROWS_UPSERTED.inc(len(upsert_rows))
        return ApplyStats(stores=len(upsert_rows), accesses=n_access - unknown, unknown_accesses=unknown)

    def _upsert_params(self, conn: Connection, rows: list[tuple[Any, ...]], scanned: bool = False) -> None:
        """Upsert `_flagged` tuples (`has_child` TRUE for the parents of the batch's other rows; the caller flags
        the parents outside it, with `_Sql.extended` or `_Sql.has_child`).  The old parents of rows moved behind
        another one lose the flag if they have no child left.  `scanned`: rows of a scan (`_Sql.upsert_scanned`)."""
        # Key order turns random B-tree inserts into near-sequential ones (3x faster at 300k rows).
        rows = _in_key_order(rows)
        if self.dialect == "postgresql" and len(rows) >= PG_COPY_MIN_ROWS:
            _pg_copy_upsert(conn, rows, scanned)
        else:
            conn.exec_driver_sql(self._sql.upsert_scanned if scanned else self._sql.upsert, rows)
        moved = conn.exec_driver_sql(self._sql.moved).all()
        if moved:  # their old parents may have no child left
            conn.exec_driver_sql(self._sql.settle_moved)
            self._unchild(conn, [tuple(r) for r in moved])

    @staticmethod
    def _executemany_count(conn: Connection, sql: str, params: list[tuple[Any, ...]]) -> int:
        """Run `sql` for each parameter tuple; total affected rows."""
        result = conn.exec_driver_sql(sql, params)
        return max(result.rowcount, 0)

    def _orphan_descendants(self, conn: Connection, gone: Sequence[tuple[Any, ...]]) -> int:
        """Mark every present descendant of the `gone` blocks ((namespace id, hash, rank, group) each) as an
        orphan: with a prefix gone, vLLM can load none of them.  Level by level through `ix_blocks_parent`;
        rows already orphans stop the walk.  Returns rows marked."""
        marked = 0
        level = list(gone)
        while level:
            by_ns: dict[int, dict[str, list[tuple[int, int]]]] = {}
            for ns, block_hash, rank, grp in level:
                by_ns.setdefault(ns, {}).setdefault(block_hash, []).append((rank, grp))
            children: list[tuple[Any, ...]] = []
            for ns, parents in by_ns.items():
                for chunk in _chunks(list(parents), KEY_CHUNK):
                    rows = conn.execute(
                        text(
                            "SELECT id, block_hash, rank, grp, parent_hash FROM blocks WHERE namespace_id = :ns "
                            "AND parent_hash IN :hashes AND NOT orphan"
                        ).bindparams(bindparam("hashes", expanding=True)),
                        {"ns": ns, "hashes": chunk},
                    ).all()
                    for block_id, block_hash, rank, grp, parent in rows:
                        if (rank, grp) in parents[parent]:
                            children.append((block_id, ns, block_hash, rank, grp))
            if not children:
                break
            conn.exec_driver_sql(self._sql.orphan_id, [(c[0],) for c in children])
            marked += len(children)
            level = [c[1:] for c in children]
        metrics.CATALOG_CHAIN_MARKS.labels(mark="orphan").inc(marked)
        return marked

    def _parents_of_keys(self, conn: Connection, params: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """(namespace id, rank, group, parent hash) of the rows with these keys ((namespace id, rank, group,
        hash, fmt) each) that record a parent: an index seek per key on the unique key."""
        by_prefix: dict[tuple[Any, ...], list[str]] = {}
        for ns, rank, grp, block_hash, fmt in params:
            by_prefix.setdefault((ns, rank, grp, fmt), []).append(block_hash)
        parents: list[tuple[Any, ...]] = []
        for (ns, rank, grp, fmt), hashes in by_prefix.items():
            for chunk in _chunks(sorted(set(hashes)), KEY_CHUNK):
                rows = conn.execute(
                    text(
                        "SELECT parent_hash FROM blocks WHERE namespace_id = :ns AND rank = :rank AND grp = :grp "
                        "AND block_hash IN :hashes AND fmt = :fmt AND parent_hash IS NOT NULL"
                    ).bindparams(bindparam("hashes", expanding=True)),
                    {"ns": ns, "rank": rank, "grp": grp, "fmt": fmt, "hashes": chunk},
                ).all()
                parents += [(ns, rank, grp, parent) for (parent,) in rows]
        return parents

    def _unchild(self, conn: Connection, parents: Iterable[tuple[Any, ...]]) -> None:
        """After rows went: `has_child` of their parents ((namespace id, rank, group, hash) each) is cleared
        where no child is left (one probe on `ix_blocks_parent` per distinct parent)."""
        distinct = sorted(set(parents))
        if distinct:
            conn.exec_driver_sql(self._sql.unchild, distinct)

    def remove_blocks(self, keys: Iterable[BlockKey]) -> int:
        """Delete the rows of `keys` (unknown keys ignored); returns rows deleted."""
        keys = list(keys)
        if not keys:
            return 0
        ns_ids = self._namespace_ids({k.namespace for k in keys}, create=False)
        params = [
            (ns_ids[k.namespace], _rank_in(k.rank), k.group, k.block_hash, k.fmt)
            for k in keys
            if k.namespace in ns_ids
        ]
        if not params:
            return 0
        with self._write("remove_blocks") as conn:
            parents = self._parents_of_keys(conn, params)
            self._orphan_descendants(conn, [(ns, h, r, g) for ns, r, g, h, _ in params])
            deleted = self._executemany_count(conn, self._sql.delete, params)
            self._unchild(conn, parents)
        metrics.CATALOG_ROWS_REMOVED.labels(why="evicted").inc(deleted)
        return deleted

    def remove_block_ids(
        self,
        block_ids: Iterable[int],
        *,
        writes: fifo.PassWrites | None = None,
        moves: bool = False,
        ghost_ids: Sequence[int] = (),
    ) -> int:
        """Delete the rows with these ids; returns rows deleted.  `writes`: an S3-FIFO sweep's pass writes,
        applied first in the same transaction (`fifo.apply_pass_writes`: its moves when `moves`, the FIFO
        ghosts of `ghost_ids` and their trim)."""
        params = [(int(i),) for i in block_ids]
        if not params and not (writes is not None and moves and writes.moves):
            return 0
        with self._write("remove_block_ids") as conn:
            if writes is not None:
                fifo.apply_pass_writes(conn, writes, moves, ghost_ids)
            gone: list[tuple[Any, ...]] = []
            for chunk in _chunks(params, KEY_CHUNK):
                marks = ", ".join(str(i) for (i,) in chunk)  # ints from int(): safe to inline
                gone += conn.exec_driver_sql(
                    f"SELECT namespace_id, block_hash, rank, grp, parent_hash FROM blocks WHERE id IN ({marks})"
                ).all()
            self._orphan_descendants(conn, [tuple(r[:4]) for r in gone])
            deleted = self._executemany_count(conn, self._sql.delete_id, params)
            self._unchild(conn, [(r[0], r[2], r[3], r[4]) for r in gone if r[4] is not None])
        metrics.CATALOG_ROWS_REMOVED.labels(why="evicted").inc(deleted)
        return deleted

    def prune_missing(
        self, scan_start: float, *, grace: float = 60.0, keep_namespaces: Iterable[str] = ()
    ) -> int:
        """Drop rows a scan started at `scan_start` did not see (their files are gone).

        A row survives when the scan saw it (`seen >= scan_start`) or when it was created or used after
        `scan_start - grace`: a block stored (or re-stored over a row whose file had vanished) or read while
        the walk was running, which the walk may have passed by; `grace` absorbs clock skew between the
        writers' hosts and this one.  `keep_namespaces`: namespaces the walk could not
        read completely, whose rows are all kept.
        """
        cutoff = scan_start - grace
        keep_ids = sorted(self._namespace_ids(keep_namespaces, create=False).values())
        params: dict[str, Any] = {"start": scan_start, "cutoff": cutoff}
        keep = ", ".join(f":k{i}" for i in range(len(keep_ids)))
        params.update({f"k{i}": ns_id for i, ns_id in enumerate(keep_ids)})

        def gone(b: str) -> str:
            where = f"{b}.seen < :start AND {b}.created < :cutoff AND {b}.last_access < :cutoff"
            return where + (f" AND {b}.namespace_id NOT IN ({keep})" if keep_ids else "")

        with self._write("prune_missing") as conn:
            # Their descendants lose their prefix.
            doomed = conn.execute(
                text(
                    f"SELECT namespace_id, block_hash, rank, grp, parent_hash FROM blocks b WHERE {gone('b')}"
                ),
                params,
            ).all()
            self._orphan_descendants(conn, [tuple(r[:4]) for r in doomed])
            deleted = conn.execute(text(f"DELETE FROM blocks WHERE {gone('blocks')}"), params).rowcount
            self._unchild(conn, [(r[0], r[2], r[3], r[4]) for r in doomed if r[4] is not None])
        metrics.CATALOG_ROWS_REMOVED.labels(why="missing").inc(deleted)
        return deleted

    # --- blocks: reads -----------------------------------------------------------------------------------

    def block_count(self, namespace: str | None = None) -> int:
        with self._read("block_count") as conn:
            if namespace is None:
                return int(conn.execute(text("SELECT count(*) FROM blocks")).scalar_one())
            ns_id = self.namespace_id(namespace)
            if ns_id is None:
                return 0
            return int(
                conn.execute(
                    text("SELECT count(*) FROM blocks WHERE namespace_id = :n"), {"n": ns_id}
                ).scalar_one()
            )

    def chain_counts(self) -> dict[str, int]:
        """Prefix-chain bookkeeping over all blocks: rows, rows with a recorded parent, orphans, superseded."""
        with self._read("chain_counts") as conn:
            row = conn.execute(
                text(
                    "SELECT count(*), count(parent_hash), "
                    "coalesce(sum(CASE WHEN orphan THEN 1 ELSE 0 END), 0), "
                    "coalesce(sum(CASE WHEN superseded THEN 1 ELSE 0 END), 0) FROM blocks"
                )
            ).one()
        return dict(
            zip(("blocks", "with_parent", "orphans", "superseded"), (int(v) for v in row), strict=True)
        )

    def usage(self) -> Usage:
        """Files, bytes and last-access range per namespace, by one aggregate over the (covering) LRU index."""
        with self._read("usage") as conn:
            agg = conn.execute(
                text(
                    "SELECT namespace_id, count(*), coalesce(sum(size), 0), min(last_access), max(last_access) "
                    "FROM blocks GROUP BY namespace_id"
                )
            ).all()
            names = conn.execute(select(Namespace.id, Namespace.name, Namespace.model)).all()
        by_id = {row[0]: row for row in agg}
        per_ns = []
        for ns_id, name, model in sorted(names, key=lambda r: r[1]):
            a = by_id.get(ns_id)
            per_ns.append(
                NamespaceUsage(
                    namespace=name,
                    model=model,
                    files=int(a[1]) if a else 0,
                    bytes=int(a[2]) if a else 0,
                    last_access_min=float(a[3]) if a else None,
                    last_access_max=float(a[4]) if a else None,
                )
            )
        return Usage(
            total_files=sum(u.files for u in per_ns),
            total_bytes=sum(u.bytes for u in per_ns),
            namespaces=per_ns,
        )

    def iter_blocks(
        self,
        *,
        namespace: str | None = None,
        order: BlockOrder = "lru",
        limit: int | None = None,
        batch: int = 5000,
    ) -> Iterator[BlockRow]:
        """Blocks in `order` ("lru": oldest access first, deeper chain position first on ties), streamed."""
        if order not in _ORDER_SQL:
            raise CatalogError(f"unknown block order {order!r} (one of {', '.join(_ORDER_SQL)})")
        sql = (
            "SELECT b.id, n.name, b.rank, b.grp, b.block_hash, b.fmt, b.size, b.created, b.last_access, "
            "b.chain_pos, b.hits FROM blocks b JOIN namespaces n ON n.id = b.namespace_id"
        )
        params: dict[str, Any] = {}
        if namespace is not None:
            ns_id = self.namespace_id(namespace)
            if ns_id is None:
                return
            sql += " WHERE b.namespace_id = :ns"
            params["ns"] = ns_id
        sql += f" ORDER BY {_ORDER_SQL[order]}"
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = int(limit)
        with self._read("iter_blocks") as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(text(sql), params)
            for r in result:
                yield BlockRow(
                    key=BlockKey(r[1], _rank_out(r[2]), r[3], r[4], r[5]),
                    size=int(r[6]),
                    created=float(r[7]),
                    last_access=float(r[8]),
                    chain_pos=int(r[9]),
                    hits=int(r[10]),
                    block_id=int(r[0]),
                )

    def get_blocks(self, keys: Iterable[BlockKey]) -> dict[BlockKey, BlockRow]:
        """The catalog rows of `keys` that exist."""
        with self._read("get_blocks") as conn:
            return self._get_blocks(conn, keys)

    def _get_blocks(self, conn: Connection, keys: Iterable[BlockKey]) -> dict[BlockKey, BlockRow]:
        found: dict[BlockKey, BlockRow] = {}
        # Group by the unique index's leading columns so each chunk is an index seek per hash;
        # filtering on namespace_id alone would scan the whole namespace per chunk.
        by_prefix: dict[tuple[str, int | None, int, str], set[BlockKey]] = {}
        for key in keys:
            by_prefix.setdefault((key.namespace, key.rank, key.group, key.fmt), set()).add(key)
        ns_ids = self._namespace_ids({prefix[0] for prefix in by_prefix}, create=False)
        for (name, rank, group, fmt), wanted in by_prefix.items():
            ns_id = ns_ids.get(name)
            if ns_id is None:
                continue
            for chunk in _chunks(sorted(k.block_hash for k in wanted), KEY_CHUNK):
                rows = conn.execute(
                    text(
                        "SELECT id, rank, grp, block_hash, fmt, size, created, last_access, chain_pos, hits, "
                        "parent_hash, orphan, superseded FROM blocks WHERE namespace_id = :ns AND rank = :rank AND grp = :grp "
                        "AND block_hash IN ("
                        + ", ".join(f":h{i}" for i in range(len(chunk)))
                        + ") AND fmt = :fmt"
                    ),
                    {
                        "ns": ns_id,
                        "rank": _rank_in(rank),
                        "grp": group,
                        "fmt": fmt,
                        **{f"h{i}": h for i, h in enumerate(chunk)},
                    },
                ).all()
                for r in rows:
                    key = BlockKey(name, _rank_out(r[1]), r[2], r[3], r[4])
                    if key in wanted:
                        found[key] = BlockRow(
                            key,
                            int(r[5]),
                            float(r[6]),
                            float(r[7]),
                            int(r[8]),
                            int(r[9]),
                            int(r[0]),
                            parent_hash=r[10],
                            orphan=bool(r[11]),
                            superseded=bool(r[12]),
                        )
        return found

    def last_access_of(self, keys: Iterable[BlockKey]) -> dict[BlockKey, float]:
        """Current last_access of the `keys` still in the catalog (the evictor's pre-delete recheck)."""
        return {key: row.last_access for key, row in self.get_blocks(keys).items()}

    def last_access_by_id(self, block_ids: Sequence[int], chunk: int = 900) -> dict[int, float]:
        """`last_access` of the rows with these ids still in the catalog (primary-key lookups: the pre-delete
        recheck runs before every delete batch)."""
        out: dict[int, float] = {}
        with self._read("last_access_by_id") as conn:
            for start in range(0, len(block_ids), chunk):
                ids = list(block_ids[start : start + chunk])
                for block_id, last_access in conn.execute(
                    select(Block.id, Block.last_access).where(Block.id.in_(ids))
                ):
                    out[int(block_id)] = float(last_access)
        return out

    # --- journal offsets ---------------------------------------------------------------------------------

    def journal_offsets(self) -> dict[str, int]:
        with self._read("journal_offsets") as conn:
            rows = conn.execute(text('SELECT segment, "offset" FROM journal_offsets')).all()
        return {segment: int(offset) for segment, offset in rows}

    def forget_segments(self, names: Iterable[str]) -> int:
        """Drop the offsets of segments the reader removed."""
        params = [(name,) for name in names]
        if not params:
            return 0
        with self._write("forget_segments") as conn:
            return self._executemany_count(conn, self._sql.forget, params)

    # --- eviction log ------------------------------------------------------------------------------------

    def log_eviction(self, time: float, namespace: str, reason: str, files: int, bytes: int) -> None:
        with self._write("log_eviction") as conn:
            conn.execute(
                text(
                    "INSERT INTO evictions (time, namespace, reason, files, bytes) "
                    "VALUES (:t, :ns, :reason, :files, :bytes)"
                ),
                {"t": time, "ns": namespace, "reason": str(reason), "files": files, "bytes": bytes},
            )

    def eviction_log(self, limit: int = 100) -> list[EvictionEntry]:
        """Most recent first."""
        with self._read("eviction_log") as conn:
            rows = conn.execute(
                text(
                    "SELECT time, namespace, reason, files, bytes FROM evictions ORDER BY time DESC, id DESC "
                    "LIMIT :limit"
                ),
                {"limit": int(limit)},
            ).all()
        return [EvictionEntry(float(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    # --- eviction candidates (the policies' SQL: kvfs.catalog.streams) ---------------------------------------

    def stream_candidates(
        self,
        namespace_ids: Sequence[int] | None,
        protect_after: float,
        block_class: BlockClass = BlockClass.ALL,
        *,
        chunk: int | None = None,
    ) -> Generator[Candidate, None, None]:
        """Eligible blocks of `block_class` in LRU order (oldest last access, deeper chain position, id),
        streamed; close the generator to release its cursor early.  See kvfs.catalog.streams."""
        return streams.stream_candidates(self, namespace_ids, protect_after, block_class, chunk=chunk)

    def segment_bytes(self, namespace_ids: Sequence[int] | None) -> tuple[int, int]:
        """(all bytes, never-read bytes) in scope."""
        return streams.segment_bytes(self, namespace_ids)

    def class_bytes(self, namespace_ids: Sequence[int] | None, total: int) -> tuple[int, int, int]:
        """(FRESH, ONCE, FREQUENT bytes) in scope, given its bytes `total` (kvfs.catalog.streams)."""
        return streams.class_bytes(self, namespace_ids, total)

    def fifo_queue_sizes(self, namespace_ids: Sequence[int] | None) -> tuple[int, int, int, int]:
        """(rows, bytes, small-queue bytes, main-queue bytes) in scope (kvfs.catalog.fifo)."""
        return fifo.queue_sizes(self, namespace_ids)

    def stream_fifo_queue(
        self, namespace_ids: Sequence[int] | None, *, main: bool
    ) -> Generator[fifo.QueuedRow, None, None]:
        """One S3-FIFO queue's rows in scope, oldest position first (kvfs.catalog.fifo)."""
        return fifo.stream_queue(self, namespace_ids, main=main)

    def fifo_ghost_keys(self) -> list[tuple[int, int, int, str]]:
        """The FIFO ghosts' keys (namespace id, rank, group, hash prefix), oldest first."""
        return fifo.ghost_keys(self)

    # --- usage groupings and metadata --------------------------------------------------------------------

    def usage_by_rank(self) -> list[tuple[str, int | None, GroupUsage]]:
        return groupings.by_rank(self)

    def usage_by_age(self, now: float, bounds: Sequence[float]) -> list[GroupUsage]:
        return groupings.by_age(self, now, bounds)

    def get_meta(self, key: str) -> str | None:
        """A `kvfs_meta` value (None: not set)."""
        with self._read("get_meta") as conn:
            value = conn.execute(text("SELECT value FROM kvfs_meta WHERE key = :k"), {"k": key}).scalar()
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        """Set a `kvfs_meta` value (e.g. the last scan's temp-file summary)."""
        if key in _RESERVED_META:
            raise CatalogError(f"kvfs_meta key {key!r} is the catalog's own")
        with self._write("set_meta") as conn:
            conn.execute(
                text(
                    "INSERT INTO kvfs_meta (key, value) VALUES (:k, :v) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                {"k": key, "v": value},
            )


_RESERVED_META = frozenset({_ROOT_ID_KEY, "schema_version"})

__all__ = ["Catalog", "SCHEMA_VERSION"]
