"""SQLAlchemy 2.0 typed models of the catalog (the latest schema version).

Times are float epoch seconds (UTC).  `blocks.rank` is -1 for namespaces written without `_r<rank>`, so the
unique key works (NULLs are distinct in a unique index).  Upgrades from older versions live in `schema.py`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only aliases the rowid for exactly "INTEGER PRIMARY KEY"; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NO_RANK = -1


class Base(DeclarativeBase):
    pass


class KvfsMeta(Base):
    __tablename__ = "kvfs_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Namespace(Base):
    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    model: Mapped[str | None] = mapped_column(String(512))
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # sha256 hex of the fingerprint fields
    fmt: Mapped[str | None] = mapped_column(String(8))  # "kvfs" | "bin" | None (unknown yet)
    created: Mapped[float] = mapped_column(Float)


class BlockState:
    """Values of `blocks.state`."""

    PRESENT = 0
    CORRUPT = 1


# Partial LRU indexes: name -> the WHERE clause a query must contain (literally) to use it.
FRESH = "hits = 0"
REUSED = "hits > 0"
ORPHAN = "orphan"
SUPERSEDED = "superseded"
PARTIAL_LRU_INDEXES = {
    "ix_blocks_fresh_lru": FRESH,
    "ix_blocks_reused_lru": REUSED,
    "ix_blocks_orphan_lru": ORPHAN,
    "ix_blocks_superseded_lru": SUPERSEDED,
}
# The partial LRU indexes that also cover the bytes of their class (v9: every class but FRESH, whose bytes are
# what the others leave), and the columns they add after `last_access` (SQLite 3.40 reads the table for a WHERE
# term on a column the index lacks).
CLASS_BYTES_INDEXES = ("ix_blocks_reused_lru", "ix_blocks_orphan_lru", "ix_blocks_superseded_lru")
CLASS_BYTES_COLUMNS = ("size", "hits", "orphan", "superseded")
# The blocks the superseded rule could mark (never read, not orphan or superseded, no children as far as
# `has_child` knows): the partial index `ix_blocks_branch` holds only these, so a branching store reads only the
# siblings it marks (v7).  The
# supersede statement repeats these terms (SQLite uses a partial index only for a WHERE that contains them).
MARKABLE = "hits = 0 AND NOT orphan AND NOT superseded AND NOT has_child"
# S3-FIFO's queues (v8): `blocks.fifo_queue` values, and each queue's partial index in queue order (the WHERE
# text a query must repeat literally).
FIFO_SMALL = 0
FIFO_MAIN = 1
FIFO_QUEUE_INDEXES = {
    "ix_blocks_fifo_small": f"fifo_queue = {FIFO_SMALL}",
    "ix_blocks_fifo_main": f"fifo_queue = {FIFO_MAIN}",
}


class Block(Base):
    __tablename__ = "blocks"
    __table_args__ = (
        UniqueConstraint("namespace_id", "rank", "grp", "block_hash", "fmt", name="uq_blocks_key"),
        # LRU order per namespace; `size` makes it covering for usage() and capacity planning.
        Index("ix_blocks_ns_lru", "namespace_id", "last_access", "size"),
        Index("ix_blocks_lru", "last_access"),
        # The children of a block (marked orphan when it goes; the `has_child` probes).
        Index(
            "ix_blocks_parent",
            "namespace_id",
            "parent_hash",
            sqlite_where=text("parent_hash IS NOT NULL"),
            postgresql_where=text("parent_hash IS NOT NULL"),
        ),
        # The siblings the superseded rule could mark, per parent (v7): see MARKABLE.
        Index(
            "ix_blocks_branch",
            "namespace_id",
            "parent_hash",
            "rank",
            "grp",
            sqlite_where=text(f"parent_hash IS NOT NULL AND {MARKABLE}"),
            postgresql_where=text(f"parent_hash IS NOT NULL AND {MARKABLE}"),
        ),
        # Rows whose parent changed in this transaction (always empty between transactions; v7).
        Index(
            "ix_blocks_old_parent",
            "id",
            sqlite_where=text("old_parent IS NOT NULL"),
            postgresql_where=text("old_parent IS NOT NULL"),
        ),
        # LRU order per reuse class and of orphans: the `prefix` policy streams each class from its own index,
        # so a rare class is found without walking the whole LRU index.  Queries must repeat the WHERE text.
        # All but FRESH also carry `size` and the class columns (v9): `adaptive`'s bytes per class, summed each
        # pass, then read no table row (FRESH, usually the largest, is not read at all).
        *(
            Index(
                name,
                "last_access",
                *(CLASS_BYTES_COLUMNS if name in CLASS_BYTES_INDEXES else ()),
                sqlite_where=text(where),
                postgresql_where=text(where),
            )
            for name, where in PARTIAL_LRU_INDEXES.items()
        ),
        # S3-FIFO's two queues, oldest position first (v8; `s3fifo`'s sweep reads them in this order); `size`
        # (and the queue: SQLite 3.40 reads the table for a WHERE term on a column the index lacks) makes each
        # covering for the queue's bytes, summed per pass.
        *(
            Index(
                name,
                "fifo_seq",
                "id",
                "size",
                "fifo_queue",
                sqlite_where=text(where),
                postgresql_where=text(where),
            )
            for name, where in FIFO_QUEUE_INDEXES.items()
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(Integer, ForeignKey("namespaces.id"))
    rank: Mapped[int] = mapped_column(Integer)
    grp: Mapped[int] = mapped_column(Integer)
    block_hash: Mapped[str] = mapped_column(String(128))
    fmt: Mapped[str] = mapped_column(String(8))
    size: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[float] = mapped_column(Float)
    last_access: Mapped[float] = mapped_column(Float)
    hits: Mapped[int] = mapped_column(BigInteger, default=0)
    chain_pos: Mapped[int] = mapped_column(Integer, default=-1)
    state: Mapped[int] = mapped_column(Integer, default=BlockState.PRESENT)
    # Start time of the last scan that saw the file (0 = never seen by a scan); see Catalog.prune_missing.
    seen: Mapped[float] = mapped_column(Float, default=0.0)
    # The previous block of its prefix chain, where the writer recorded it (v3).
    parent_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # Its parent was deleted: vLLM can never load it (prefix semantics) until the chain is sent again (v3).
    orphan: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A never-read leaf whose parent got a newer child: the branch a conversation left behind (the previous
    # turn's last block), almost never read again (v4).  See Catalog.apply_journal.
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Some block of the same namespace, rank and group has this block as its parent (v7).  TRUE only then: set
    # when a child is stored behind it, cleared when its last child goes or moves behind another parent
    # (Catalog's upserts and deletes, `old_parent`).  A row stored when its children were there
    # already (stored again after its removal, found by a scan, or another format of the same block) starts
    # FALSE and gets it from the first sibling check that reads it (`_Sql.heal`), so `ix_blocks_branch` holds
    # each such row until then.
    has_child: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The parent this row had before a store over it recorded another one (v7): the upsert keeps it here, and
    # the same transaction clears that parent's `has_child` if it has no child left, then this column.
    old_parent: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # S3-FIFO's state, kept on every row whatever policy runs (v8; kvfs.policy.s3fifo): the queue (FIFO_SMALL
    # or FIFO_MAIN), the position in it (a new row gets the next value of the tier's counter, the largest
    # `fifo_seq` plus one; so does a row the sweep moves to main's tail) and the 2-bit use counter.  A row
    # stored by the journal enters small (main if its key is a FIFO ghost); rows a scan finds enter small at
    # position 0, the head (nothing is known of them).
    fifo_queue: Mapped[int] = mapped_column(Integer, default=FIFO_SMALL, server_default=text("0"))
    fifo_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    fifo_freq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class JournalOffset(Base):
    __tablename__ = "journal_offsets"

    segment: Mapped[str] = mapped_column(String(255), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[float] = mapped_column(Float)


class Eviction(Base):
    __tablename__ = "evictions"
    __table_args__ = (Index("ix_evictions_time", "time"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float)
    namespace: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(String(32))
    files: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """Evictor leader election (the logic is the evictor's)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float)


class PolicyGhost(Base):
    """Keys of blocks a policy evicted for capacity or quota (v5; `kvfs.catalog.ghosts`): 2q and prefix
    remember them, one row per policy and block key (namespace, rank, group, the first 64 bits of the hash),
    so a block stored again after its eviction is known as a re-store."""

    __tablename__ = "policy_ghosts"
    __table_args__ = (Index("ix_policy_ghosts_last_seen", "policy", "last_seen"),)

    policy: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    grp: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash_prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_seen: Mapped[float] = mapped_column(Float)  # the block's last access when it was evicted
    reused: Mapped[bool] = mapped_column(Boolean, default=False)  # hits > 0 when it went (prefix's class)
    # hits >= 2 when it went (v9: adaptive's third class; FALSE for every other policy)
    frequent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class PolicyState(Base):
    """Per policy: the id/time watermark of rows already checked for re-stores, and prefix's bonus (v5)."""

    __tablename__ = "policy_states"

    policy: Mapped[str] = mapped_column(String(64), primary_key=True)
    block_id: Mapped[int] = mapped_column(BigInteger)
    access_time: Mapped[float] = mapped_column(Float)
    beta: Mapped[float] = mapped_column(Float, default=0.0)
    extra: Mapped[str | None] = mapped_column(Text, nullable=True)  # v9: a policy's state beyond beta (JSON)


class FifoGhost(Base):
    """Keys of blocks evicted from S3-FIFO's small queue, oldest first by `seq` (v8; kvfs.catalog.fifo): a block
    stored again while its key is here enters the main queue.  Bounded by the main queue's share of the tier
    (the sweep's planner gives the bound, the executor trims)."""

    __tablename__ = "fifo_ghosts"
    __table_args__ = (Index("ix_fifo_ghosts_seq", "seq"),)

    namespace_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    grp: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash_prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
