"""Shared fixtures: a fresh PostgreSQL database per test, catalog URLs for both backends."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kvfs.catalog import Catalog

PG_HOST = os.environ.get("KVFS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KVFS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("KVFS_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("KVFS_TEST_PG_DB", "test")


def _pg_admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, autocommit=True, connect_timeout=3
    )


def pg_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        with _pg_admin_connect() as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", reported as the skip reason
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} does not answer: {exc}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards.

    Skips with the reason when no server answers, unless KVFS_REQUIRE_POSTGRES=1 (CI), where it fails.
    """
    reason = pg_available()
    if reason:
        if os.environ.get("KVFS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"kvfs_t_{secrets.token_hex(6)}"
    with _pg_admin_connect() as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once per catalog backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    """An open catalog on each backend, closed after the test."""
    from kvfs.catalog import Catalog

    cat = Catalog.open(catalog_url)
    yield cat
    cat.close()


@pytest.fixture
def python_block_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block files through kvfs.blockfile's Python path, not the compiled one (kvfs.nativeio): for tests of that
    path's own steps (they patch its functions)."""
    from kvfs import nativeio

    monkeypatch.setattr(nativeio, "MODULE", None)


@pytest.fixture(params=["native", "python"])
def block_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each block-file test on both paths: the compiled one (kvfs.nativeio, when built) and the Python one."""
    from kvfs import nativeio

    if request.param == "native":
        if nativeio.MODULE is None:
            pytest.skip(f"the compiled block-file path is {nativeio.STATUS}")
        if "python_block_io" in request.fixturenames:
            pytest.skip("a test of the Python path's own steps")
    else:
        monkeypatch.setattr(nativeio, "MODULE", None)
    return str(request.param)


@pytest.fixture
def standalone_runner() -> Callable[[Any, Any], Any]:
    """Builds the evictor's pass runner on its own, as a test drives it: no ingest thread, no tree feed, always
    leader (`standalone_runner(settings, catalog)`)."""
    import threading

    from evictor.passes import PassRunner

    def build(settings: Any, catalog: Any) -> Any:
        return PassRunner(
            settings,
            catalog,
            ingest=lambda: None,
            temp_files=list,
            forget_temp_files=lambda _paths: None,
            still_leader=lambda: True,
            stopping=threading.Event(),
        )

    return build
