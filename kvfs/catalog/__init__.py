"""The kvfs catalog: what blocks exist, how big, how recently used (SQLite on local disk or PostgreSQL).

catalog = Catalog.open("sqlite:////var/lib/kvfs/catalog.db", root="/mnt/files-storage")
catalog.upsert_blocks(rows); catalog.apply_journal(batch.records, batch.offsets); catalog.usage()

Every SQL statement of kvfs lives in this package; other code calls `Catalog` methods (and `ghosts`, the
policies' bookkeeping) and catches `CatalogError` (`CatalogUnavailable` for a failed statement).
"""

from kvfs.catalog.catalog import Catalog
from kvfs.catalog.engine import default_catalog_url, parse_catalog_url
from kvfs.catalog.errors import CatalogError, CatalogUnavailable, RootMismatchError
from kvfs.catalog.models import (
    NO_RANK,
    Base,
    Block,
    BlockState,
    Eviction,
    FifoGhost,
    JournalOffset,
    KvfsMeta,
    Lease,
    Namespace,
    PolicyGhost,
    PolicyState,
)
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
from kvfs.catalog.schema import SCHEMA_VERSION
from kvfs.catalog.streams import BlockClass

__all__ = [
    "NO_RANK",
    "SCHEMA_VERSION",
    "ApplyStats",
    "Base",
    "Block",
    "BlockClass",
    "BlockRow",
    "BlockState",
    "Candidate",
    "Catalog",
    "CatalogError",
    "CatalogUnavailable",
    "Eviction",
    "EvictionEntry",
    "FifoGhost",
    "GroupUsage",
    "JournalOffset",
    "KvfsMeta",
    "Lease",
    "Namespace",
    "NamespaceInfo",
    "NamespaceUsage",
    "PolicyGhost",
    "PolicyState",
    "RootMismatchError",
    "Usage",
    "default_catalog_url",
    "parse_catalog_url",
]
