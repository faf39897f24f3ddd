"""S3-FIFO's state in the catalog (schema v8): the queues, their counter, the FIFO ghosts, and the sweep's writes.

Every row carries `fifo_queue` (small or main), `fifo_seq` (its position) and `fifo_freq` (a 2-bit use
counter), whatever policy runs (kvfs.catalog.models).  This module holds their SQL:

* journal apply (`Catalog.apply_journal`): `before_stores` reads the tier's counter (the largest position, one
  probe per queue index) and whether any FIFO ghost exists; new rows get the next positions in store order;
  `ghost_returns` moves new rows whose key is a FIFO ghost to main and spends those ghosts (one probe of the
  ghosts' primary key per new row, only while ghosts exist).  An ACCESS raises `fifo_freq` in the same UPDATE
  as `hits` (`_Sql.access`).
* planning (`s3fifo`'s sweep): `queue_sizes` and `stream_queue` read; nothing here writes while planning.
* the pass's writes (`PassWrites`, collected by the planner from the policy and applied by the executor with
  the first delete batch that removes rows, in its transaction; never in a dry run): the sweep's moves (a used
  small-queue row promoted to main, a main row with a counter given another lap), each at the next position
  in the order the sweep made them; then the FIFO ghosts of the batch's capacity or quota victims that were
  in the small queue when they went, and the ghosts trimmed to the bound the planner computed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, text

from kvfs.catalog.models import FIFO_MAIN, FIFO_QUEUE_INDEXES, FIFO_SMALL, NO_RANK
from kvfs.layout import BlockKey

if TYPE_CHECKING:
    from kvfs.catalog.catalog import Catalog

MAX_FREQ = 3  # 2 bits (kvfs.policy.s3fifo_core.MAX_FREQ; tested equal)
HASH_PREFIX = 16  # as kvfs.catalog.ghosts: the first 64 bits of a block hash name its ghost
PROMOTE = -1  # a move that promotes a small-queue row (else: the number of laps given)
_SMALL_WHERE, _MAIN_WHERE = FIFO_QUEUE_INDEXES.values()
_CHUNK = 500

# The counter is the largest position in either queue (each an index probe: ORDER BY ... LIMIT 1 reads the
# partial index's last entry; max() would not use it on SQLite).
_TOP = (
    "SELECT (SELECT max(id) FROM blocks), "
    f"(SELECT fifo_seq FROM blocks WHERE {_SMALL_WHERE} ORDER BY fifo_seq DESC LIMIT 1), "
    f"(SELECT fifo_seq FROM blocks WHERE {_MAIN_WHERE} ORDER BY fifo_seq DESC LIMIT 1), "
    "(SELECT 1 FROM fifo_ghosts LIMIT 1)"
)
# New rows (ids above the batch's starting top: SQLite and PostgreSQL both give new rows larger ids) whose key is
# a ghost.  CROSS JOIN keeps SQLite driving from the new rows and probing the ghosts' primary key.
_RETURNS = (
    "SELECT b.id, g.namespace_id, g.rank, g.grp, g.hash_prefix FROM blocks b CROSS JOIN fifo_ghosts g "
    "WHERE b.id > :top AND g.namespace_id = b.namespace_id AND g.rank = b.rank AND g.grp = b.grp "
    f"AND g.hash_prefix = substr(b.block_hash, 1, {HASH_PREFIX})"
)
_TO_MAIN = f"UPDATE blocks SET fifo_queue = {FIFO_MAIN} WHERE id = :id"
_SPEND = (
    "DELETE FROM fifo_ghosts WHERE namespace_id = :ns AND rank = :rank AND grp = :grp AND hash_prefix = :h"
)
_PROMOTE = f"UPDATE blocks SET fifo_queue = {FIFO_MAIN}, fifo_freq = 0, fifo_seq = :seq WHERE id = :id"
_LAP = (
    "UPDATE blocks SET fifo_freq = CASE WHEN fifo_freq > :laps THEN fifo_freq - :laps ELSE 0 END, "
    "fifo_seq = :seq WHERE id = :id"
)
_GHOST_TOP = "SELECT seq FROM fifo_ghosts ORDER BY seq DESC LIMIT 1"
_REMEMBER = (
    "INSERT INTO fifo_ghosts (namespace_id, rank, grp, hash_prefix, seq) VALUES (:ns, :rank, :grp, :h, :seq) "
    "ON CONFLICT (namespace_id, rank, grp, hash_prefix) DO UPDATE SET seq = excluded.seq"
)
_GHOST_COUNT = "SELECT count(*) FROM fifo_ghosts"
# The oldest `excess` ghosts (positions are unique: given under the write lock).
_TRIM = "DELETE FROM fifo_ghosts WHERE seq <= (SELECT seq FROM fifo_ghosts ORDER BY seq LIMIT 1 OFFSET :skip)"


@dataclass
class PassWrites:
    """What an S3-FIFO sweep decided besides its victims, applied by the executor (`Catalog.remove_block_ids`).

    `moves`: (block id, `PROMOTE` or laps) in the order the rows reached main's tail; `ghost_limit`: how many
    FIFO ghosts to keep (the main queue's share of the blocks that stay)."""

    moves: list[tuple[int, int]] = field(default_factory=list)
    ghost_limit: int = 0


class QueuedRow:
    """A row as the sweep reads it from a queue (`stream_queue`); `freq` and `main` are the sweep's to change.
    `last_access` is the later of the row's access and creation (the sweep sets aside rows at or after the
    pass's protection time, as the planner's streams leave them out); `access` the recency to recheck.  The key
    is built only for rows offered (about half the rows a sweep reads go back to main)."""

    __slots__ = (
        "_raw",
        "access",
        "block_id",
        "chain_pos",
        "freq",
        "hits",
        "laps",
        "last_access",
        "main",
        "promoted",
        "size",
    )

    def __init__(
        self,
        block_id: int,
        raw: tuple[Any, ...],
        size: int,
        last_access: float,
        access: float,
        chain_pos: int,
        freq: int,
        main: bool,
        hits: int = 0,
    ) -> None:
        self.block_id = block_id
        self.hits = hits  # reads since stored (adaptive records the class of a sweep's victim)
        self._raw = raw  # (namespace name, namespace id, rank, group, hash, format)
        self.size = size
        self.last_access = last_access
        self.access = access
        self.chain_pos = chain_pos
        self.freq = freq
        self.main = main
        self.laps = 0
        self.promoted = False

    @property
    def namespace_id(self) -> int:
        return int(self._raw[1])

    @property
    def key(self) -> BlockKey:
        name, _, rank, grp, block_hash, fmt = self._raw
        return BlockKey(name, None if rank == NO_RANK else rank, grp, block_hash, fmt)


def before_stores(conn: Connection) -> tuple[int, int, bool]:
    """(largest block id, the next queue position, whether any FIFO ghost exists), under the write lock."""
    top_id, small, main, ghost = conn.execute(text(_TOP)).one()
    return int(top_id or 0), max(int(small or 0), int(main or 0)) + 1, ghost is not None


def ghost_returns(conn: Connection, top_id: int) -> int:
    """Rows new since `top_id` whose key is a FIFO ghost enter main (at the position they were given); their
    ghosts go.  Returns rows moved."""
    found = conn.execute(text(_RETURNS), {"top": top_id}).all()
    if found:
        conn.execute(text(_TO_MAIN), [{"id": r[0]} for r in found])
        conn.execute(text(_SPEND), [{"ns": r[1], "rank": r[2], "grp": r[3], "h": r[4]} for r in found])
    return len(found)


def _next_seq(conn: Connection) -> int:
    return before_stores(conn)[1]


def apply_moves(conn: Connection, moves: Sequence[tuple[int, int]]) -> None:
    """The sweep's moves, each to main's tail at the next position, in order.  A lap lowers the counter by the
    laps given, not to the value seen while planning: uses recorded since then still count."""
    if not moves:
        return
    base = _next_seq(conn)
    promote = [{"id": i, "seq": base + n} for n, (i, laps) in enumerate(moves) if laps == PROMOTE]
    lap = [{"id": i, "seq": base + n, "laps": laps} for n, (i, laps) in enumerate(moves) if laps != PROMOTE]
    if promote:
        conn.execute(text(_PROMOTE), promote)
    if lap:
        conn.execute(text(_LAP), lap)


def remember(conn: Connection, block_ids: Sequence[int]) -> int:
    """FIFO ghosts for those of `block_ids` (in eviction order, about to be deleted) that are in the small
    queue, newest last.  Returns ghosts written."""
    rows: dict[int, tuple[Any, ...]] = {}
    for start in range(0, len(block_ids), _CHUNK):
        chunk = list(block_ids[start : start + _CHUNK])
        for r in conn.execute(
            text(
                f"SELECT id, namespace_id, rank, grp, block_hash FROM blocks WHERE {_SMALL_WHERE} AND id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": chunk},
        ):
            rows[int(r[0])] = tuple(r[1:])
    if not rows:
        return 0
    top = conn.execute(text(_GHOST_TOP)).scalar()
    seq = int(top or 0)
    params = []
    for block_id in block_ids:
        row = rows.pop(block_id, None)
        if row is not None:
            seq += 1
            params.append(
                {"ns": row[0], "rank": row[1], "grp": row[2], "h": row[3][:HASH_PREFIX], "seq": seq}
            )
    conn.execute(text(_REMEMBER), params)
    return len(params)


def trim(conn: Connection, limit: int) -> int:
    """Keep the newest `limit` FIFO ghosts (at least one); returns ghosts dropped."""
    count = int(conn.execute(text(_GHOST_COUNT)).scalar_one())
    excess = count - max(1, limit)
    if excess <= 0:
        return 0
    return int(conn.execute(text(_TRIM), {"skip": excess - 1}).rowcount)


def _scope(namespace_ids: Sequence[int] | None) -> tuple[str, dict[str, Any]]:
    if namespace_ids is None:
        return "", {}
    marks = ", ".join(f":ns{i}" for i in range(len(namespace_ids)))
    return f" AND namespace_id IN ({marks})", {f"ns{i}": int(n) for i, n in enumerate(namespace_ids)}


def queue_sizes(catalog: Catalog, namespace_ids: Sequence[int] | None) -> tuple[int, int, int, int]:
    """(rows, bytes, small-queue bytes, main-queue bytes) in scope, the request in flight included (the sweep
    counts it; it sets it aside)."""
    where, params = _scope(namespace_ids)
    if namespace_ids is None:
        # Every row is in one queue: each queue's covering index summed alone reads no table row (a third of
        # the time of one aggregate over the table at 1M rows).
        small_ix, main_ix = ("INDEXED BY ix_blocks_fifo_small", "INDEXED BY ix_blocks_fifo_main")
        if catalog.dialect != "sqlite":
            small_ix = main_ix = ""
        sql = (
            f"SELECT (SELECT count(*) FROM blocks {small_ix} WHERE {_SMALL_WHERE}), "
            f"(SELECT coalesce(sum(size), 0) FROM blocks {small_ix} WHERE {_SMALL_WHERE}), "
            f"(SELECT count(*) FROM blocks {main_ix} WHERE {_MAIN_WHERE}), "
            f"(SELECT coalesce(sum(size), 0) FROM blocks {main_ix} WHERE {_MAIN_WHERE})"
        )
        with catalog._read("fifo_sizes") as conn:
            n_small, small, n_main, main = (int(v) for v in conn.execute(text(sql)).one())
        return n_small + n_main, small + main, small, main
    sql = (
        "SELECT count(*), coalesce(sum(size), 0), "
        f"coalesce(sum(CASE WHEN fifo_queue = {FIFO_SMALL} THEN size ELSE 0 END), 0) FROM blocks WHERE TRUE"
        + where
    )
    with catalog._read("fifo_sizes") as conn:
        rows, total, small = conn.execute(text(sql), params).one()
    return int(rows), int(total), int(small), int(total) - int(small)


def stream_queue(
    catalog: Catalog, namespace_ids: Sequence[int] | None, *, main: bool, chunk: int = 1000
) -> Generator[QueuedRow, None, None]:
    """One queue's rows in scope, oldest position first, through a streaming cursor (the partial index of the
    queue), `chunk` rows a fetch: the sweep peeks at both queues at once, and often needs one of them little
    (5,000 rows fetched for nothing cost ~20 ms at 1M rows).  Close the generator to release it."""
    where, params = _scope(namespace_ids)
    index = "ix_blocks_fifo_main" if main else "ix_blocks_fifo_small"
    # SQLite names the queue's index: with a namespace scope it would rather read the namespace's LRU index and
    # sort the whole namespace.
    table = f"blocks INDEXED BY {index}" if catalog.dialect == "sqlite" else "blocks"
    sql = (
        "SELECT id, namespace_id, rank, grp, block_hash, fmt, size, last_access, created, chain_pos, fifo_freq, "
        "hits "
        f"FROM {table} WHERE {_MAIN_WHERE if main else _SMALL_WHERE}{where} ORDER BY fifo_seq, id"
    )
    with catalog._read("fifo_stream") as conn:
        names = {ns_id: name for ns_id, name in conn.execute(text("SELECT id, name FROM namespaces"))}
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(text(sql), params)
        try:
            for rows in result.partitions(chunk):  # the size given: yield_per is not applied to text()
                for block_id, ns_id, rank, grp, block_hash, fmt, size, last, created, pos, freq, hits in rows:
                    raw = (names[ns_id], ns_id, rank, grp, block_hash, fmt)
                    recent = last if last >= created else created
                    yield QueuedRow(block_id, raw, size, recent, last, pos, freq, main, hits)
        finally:
            result.close()


def ghost_keys(catalog: Catalog) -> list[tuple[int, int, int, str]]:
    """The FIFO ghosts' keys, oldest first (tests, `kvfs` diagnostics)."""
    with catalog._read("fifo_ghosts") as conn:
        return [
            (int(r[0]), int(r[1]), int(r[2]), str(r[3]))
            for r in conn.execute(
                text("SELECT namespace_id, rank, grp, hash_prefix FROM fifo_ghosts ORDER BY seq")
            )
        ]


def apply_pass_writes(conn: Connection, writes: PassWrites, moves: bool, ghost_ids: Iterable[int]) -> None:
    """In a delete batch's transaction, before its rows go: the sweep's moves (`moves`: this is the first batch
    that removes rows), the FIFO ghosts of `ghost_ids` (its capacity or quota victims, in order), the trim."""
    if moves:
        apply_moves(conn, writes.moves)
    ids = list(ghost_ids)
    if ids and remember(conn, ids):
        trim(conn, writes.ghost_limit)
