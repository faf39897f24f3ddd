"""The kvfs catalog: what blocks exist, how big, how recently used (SQLite on local disk or PostgreSQL).

catalog = Catalog.open("sqlite:////var/lib/kvfs/catalog.db", root="/mnt/files-storage")
catalog.upsert_blocks(rows); catalog.apply_journal(batch.records, batch.offsets); catalog.usage()
"""

from kvfs.catalog.catalog import Catalog
from kvfs.catalog.engine import default_catalog_url, parse_catalog_url
from kvfs.catalog.errors import CatalogError, RootMismatchError
from kvfs.catalog.models import (
    NO_RANK,
    Base,
    Block,
    BlockState,
    Eviction,
    JournalOffset,
    KvfsMeta,
    Lease,
    Namespace,
)
from kvfs.catalog.records import ApplyStats, BlockRow, EvictionEntry, NamespaceInfo, NamespaceUsage, Usage
from kvfs.catalog.schema import SCHEMA_VERSION

__all__ = [
    "NO_RANK",
    "SCHEMA_VERSION",
    "ApplyStats",
    "Base",
    "Block",
    "BlockRow",
    "BlockState",
    "Catalog",
    "CatalogError",
    "Eviction",
    "EvictionEntry",
    "JournalOffset",
    "KvfsMeta",
    "Lease",
    "Namespace",
    "NamespaceInfo",
    "NamespaceUsage",
    "RootMismatchError",
    "Usage",
    "default_catalog_url",
    "parse_catalog_url",
]
