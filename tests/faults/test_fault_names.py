"""Issue 13, failure 2: one directory whose name is not UTF-8 but is shaped like a namespace made `kvfs scan`,
`kvfs gc` and the evictor's start-up scan fail on every attempt (the name cannot be encoded for the catalog)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from faultlib import Store
from prometheus_client import REGISTRY

from kvfs.catalog import Catalog
from kvfs.cli import main

BAD_NAMES = [b"\xff\xfe_0123456789ab_r0", b"caf\xe9_0123456789ab"]


def _undecodable() -> float:
    return REGISTRY.get_sample_value("kvfs_undecodable_names_total") or 0.0


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_scan_and_gc_skip_and_count_a_non_utf8_namespace_dir(tmp_path: Path, bad: bytes) -> None:
    store = Store(tmp_path / "root")
    for n in range(6):
        store.block(n)
    bad_dir = os.path.join(os.fsencode(store.root), bad)
    os.mkdir(bad_dir)
    # Not empty either: a block-shaped file inside it must not reach the catalog.
    inner = os.path.join(bad_dir, b"abc", b"de_g0")
    os.makedirs(inner)
    with open(os.path.join(inner, b"abcde" + b"0" * 27 + b".bin"), "wb") as fh:
        fh.write(b"x" * 100)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    base = ["--root", str(store.root), "--catalog", url]
    runner = CliRunner()
    before = _undecodable()
    scanned = runner.invoke(main, [*base, "scan", "--json"])
    assert scanned.exit_code == 0, scanned.output
    assert json.loads(scanned.stdout)["files"] == 6
    assert _undecodable() > before
    gc = runner.invoke(main, [*base, "gc", "--max-bytes", "0", "--scan", "--json"])
    assert gc.exit_code == 0, gc.output
    assert json.loads(gc.stdout)["deleted_files"] == 6
    with Catalog.open(url) as catalog:
        assert [ns.name for ns in catalog.namespaces()] == [store.namespace]
    assert os.path.isdir(bad_dir)  # not ours to judge: left alone
