"""SQL only in kvfs/catalog: no shipped module outside it talks to the database or imports the test helper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SQL = re.compile(r"sqlalchemy|\.execute\(|exec_driver_sql")
TEST_HELPER = re.compile(
    r"^\s*(from kvfs\.catalog\.testing import|import kvfs\.catalog\.testing|from kvfs\.catalog import .*\btesting\b)",
    re.MULTILINE,
)


def shipped_files() -> list[Path]:
    return sorted(p for pkg in ("kvfs", "evictor", "connector") for p in (REPO / pkg).rglob("*.py"))


def test_no_sql_outside_the_catalog_package() -> None:
    files = shipped_files()
    assert len(files) > 20
    catalog = REPO / "kvfs" / "catalog"
    offenders = [
        str(p.relative_to(REPO)) for p in files if catalog not in p.parents and SQL.search(p.read_text())
    ]
    assert offenders == []


def test_product_code_never_imports_the_test_helper() -> None:
    helper = REPO / "kvfs" / "catalog" / "testing.py"
    offenders = [
        str(p.relative_to(REPO)) for p in shipped_files() if p != helper and TEST_HELPER.search(p.read_text())
    ]
    assert offenders == []


def test_a_postgresql_catalog_without_its_driver_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    """The engine image has no psycopg (the `evictor` extra): a PostgreSQL URL must be a CatalogError naming
    the extra, not an ImportError traceback."""
    import builtins

    from kvfs.catalog import Catalog, CatalogError

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(CatalogError, match=r"driver is not installed \(psycopg\).*evictor extra"):
        Catalog.open("postgresql+psycopg://nobody@127.0.0.1:1/none")
