"""Plain data the catalog takes and returns (no SQLAlchemy objects leak out of the facade)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvfs.layout import BlockKey


@dataclass(slots=True)
class BlockRow:
    """One block as the catalog knows it; `block_id` is set on rows read back from the catalog."""

    key: BlockKey
    size: int
    created: float
    last_access: float
    chain_pos: int = -1
    hits: int = 0
    block_id: int | None = None
    parent_hash: str | None = None  # the previous block of its prefix chain, where the writer recorded it
    orphan: bool = False  # its parent was removed (read back by get_blocks; never written from here)
    superseded: bool = False  # a never-read leaf whose parent got a newer child (read back, as `orphan`)


# Not frozen: a frozen dataclass's __init__ costs ~3x more, and the planner builds 100k+ of these.
@dataclass(slots=True)
class Candidate:
    """One block offered for eviction, with the recency it was chosen on (for the pre-delete recheck)."""

    block_id: int
    key: BlockKey
    size: int
    last_access: float
    chain_pos: int = -1  # index in the prefix chain (-1: unknown); the `prefix` policy's tie-break
    hits: int = -1  # reads since stored, as the stream read it (-1: not read); `adaptive`'s class


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    id: int
    name: str
    model: str | None
    fingerprint: str | None
    created: float
    fmt: str | None = None


@dataclass(frozen=True, slots=True)
class NamespaceUsage:
    namespace: str
    model: str | None
    files: int
    bytes: int
    last_access_min: float | None
    last_access_max: float | None


@dataclass(frozen=True, slots=True)
class GroupUsage:
    """Files, bytes and last-access range of one group of blocks (`kvfs du --by rank|age`)."""

    files: int
    bytes: int
    last_access_min: float | None
    last_access_max: float | None


@dataclass(frozen=True, slots=True)
class Usage:
    total_files: int
    total_bytes: int
    namespaces: list[NamespaceUsage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EvictionEntry:
    time: float
    namespace: str
    reason: str
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ApplyStats:
    """What one `apply_journal` call did."""

    stores: int
    accesses: int
    unknown_accesses: int
