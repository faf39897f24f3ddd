"""Issue 13, failure 8: a catalog pointed at another root silently dropped its rows ("350 already gone")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from faultlib import REPO, Store, env

from kvfs.catalog import Catalog, RootMismatchError
from kvfs.cli import main
from kvfs.layout import read_root_id


def test_catalog_of_another_root_is_refused_and_keeps_its_rows(tmp_path: Path, catalog_url: str) -> None:
    a = Store(tmp_path / "a")
    b = Store(tmp_path / "b")
    for n in range(5):
        a.block(n)
    b.block(99)
    runner = CliRunner()
    scanned = runner.invoke(main, ["--root", str(a.root), "--catalog", catalog_url, "scan", "--json"])
    assert scanned.exit_code == 0, scanned.output
    for command in (["gc", "--max-bytes", "0", "--json"], ["scan", "--json"], ["du", "--json"]):
        result = runner.invoke(main, ["--root", str(b.root), "--catalog", catalog_url, *command])
        assert result.exit_code == 1, (command, result.output)
        assert "belongs to another root" in result.stderr and "Traceback" not in result.output
    with Catalog.open(catalog_url, root=a.root) as catalog:
        assert catalog.block_count() == 5
        assert catalog.root_id() == read_root_id(a.root) != read_root_id(b.root)
    with pytest.raises(RootMismatchError):
        Catalog.open(catalog_url, root=b.root)


def test_evictor_refuses_a_catalog_of_another_root(tmp_path: Path) -> None:
    a = Store(tmp_path / "a")
    b = Store(tmp_path / "b")
    a.block(1)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    assert CliRunner().invoke(main, ["--root", str(a.root), "--catalog", url, "scan"]).exit_code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "evictor", "--root", str(b.root), "--catalog", url, "--metrics-port", "0"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "belongs to another root" in proc.stdout + proc.stderr
    with Catalog.open(url, root=a.root) as catalog:
        assert catalog.block_count() == 1
