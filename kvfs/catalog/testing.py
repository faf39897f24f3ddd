"""Raw access to a catalog's database, for tests and benchmarks only.

Product code never imports this module: outside `kvfs/catalog/` it calls `Catalog` methods (tests/kvfs/
test_catalog_boundary.py checks both).  Tests use it to set up states the product cannot reach (an old schema,
a broken table), to look at rows the facade does not return, and to dump a whole catalog.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Select, inspect, text

from kvfs.catalog.catalog import Catalog


@contextlib.contextmanager
def connection(catalog: Catalog, *, write: bool = False) -> Iterator[Connection]:
    """A SQLAlchemy connection in one transaction (committed on exit); `write`: the catalog's write mode."""
    with catalog._write("testing") if write else catalog._read("testing") as conn:
        yield conn


def scalar(catalog: Catalog, sql: str, **params: Any) -> Any:
    """The first column of the first row of `sql` (None: no row)."""
    with connection(catalog) as conn:
        return conn.execute(text(sql), params).scalar()


def execute(catalog: Catalog, sql: str, **params: Any) -> int:
    """Run one statement in a write transaction; its rowcount."""
    with connection(catalog, write=True) as conn:
        return int(conn.execute(text(sql), params).rowcount)


def raw_connection(catalog: Catalog) -> Any:
    """The bare driver connection (sqlite3 / psycopg) from the catalog's pool; the caller closes it."""
    return catalog._engine.raw_connection()


def tables(catalog: Catalog) -> set[str]:
    with connection(catalog) as conn:
        return set(inspect(conn).get_table_names())


def indexes(catalog: Catalog, table: str) -> set[str]:
    with connection(catalog) as conn:
        return {str(ix["name"]) for ix in inspect(conn).get_indexes(table)}


def index_columns(catalog: Catalog, table: str) -> dict[str, list[str]]:
    """Each index of `table` with its columns, in order."""
    with connection(catalog) as conn:
        return {
            str(ix["name"]): [str(c) for c in ix["column_names"]] for ix in inspect(conn).get_indexes(table)
        }


def columns(catalog: Catalog, table: str) -> set[str]:
    with connection(catalog) as conn:
        return {str(c["name"]) for c in inspect(conn).get_columns(table)}


def dump(catalog: Catalog) -> dict[str, list[tuple[Any, ...]]]:
    """Every table with every row (sorted, so equal content compares equal), in one snapshot."""
    with connection(catalog) as conn:
        names = sorted(inspect(conn).get_table_names())
        return {
            name: sorted((tuple(r) for r in conn.execute(text(f'SELECT * FROM "{name}"'))), key=repr)
            for name in names
        }


def query_plan(catalog: Catalog, query: Select[Any]) -> str:
    """The database's plan for `query` (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN), one line per step."""
    with connection(catalog) as conn:
        compiled = query.compile(conn, compile_kwargs={"render_postcompile": True})
        prefix = "EXPLAIN QUERY PLAN " if catalog.dialect == "sqlite" else "EXPLAIN "
        rows = conn.exec_driver_sql(prefix + str(compiled), _positional(compiled, catalog.dialect)).all()
    return "\n".join(str(r[-1]) for r in rows)


def statement_plan(catalog: Catalog, sql: str, params: tuple[Any, ...]) -> str:
    """The database's plan for a driver-level statement of the catalog (e.g. `catalog._sql.supersede`) with
    positional `params`, one line per step; an UPDATE is planned, not run."""
    with connection(catalog) as conn:
        prefix = "EXPLAIN QUERY PLAN " if catalog.dialect == "sqlite" else "EXPLAIN "
        rows = conn.exec_driver_sql(prefix + sql, params).all()
    return "\n".join(str(r[-1]) for r in rows)


def _positional(compiled: Any, dialect: str) -> Any:
    params = compiled.construct_params()
    if dialect == "sqlite":
        return tuple(params[name] for name in compiled.positiontup)
    return params


# Take a current catalog back to schema v8 (tests of the v9 upgrade) or v7 (the v8 upgrade, and older upgrades
# that start from a catalog written by this version).
TO_V8 = (
    "ALTER TABLE policy_ghosts DROP COLUMN frequent",
    "ALTER TABLE policy_states DROP COLUMN extra",
    "DROP INDEX ix_blocks_reused_lru",
    "DROP INDEX ix_blocks_orphan_lru",
    "DROP INDEX ix_blocks_superseded_lru",
    "CREATE INDEX ix_blocks_reused_lru ON blocks (last_access) WHERE hits > 0",
    "CREATE INDEX ix_blocks_orphan_lru ON blocks (last_access) WHERE orphan",
    "CREATE INDEX ix_blocks_superseded_lru ON blocks (last_access) WHERE superseded",
    "UPDATE kvfs_meta SET value = '8' WHERE key = 'schema_version'",
)
TO_V7 = (
    *TO_V8[:-1],
    "DROP INDEX ix_blocks_fifo_small",
    "DROP INDEX ix_blocks_fifo_main",
    "ALTER TABLE blocks DROP COLUMN fifo_queue",
    "ALTER TABLE blocks DROP COLUMN fifo_seq",
    "ALTER TABLE blocks DROP COLUMN fifo_freq",
    "DROP TABLE fifo_ghosts",
    "UPDATE kvfs_meta SET value = '7' WHERE key = 'schema_version'",
)
