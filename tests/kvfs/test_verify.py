"""`kvfs verify`: every kind of damage is found, reported with its reason, and deleted only when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvfs.blockfile import HEADER_SIZE, BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import Catalog
from kvfs.cli import main
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config
from kvfs.verify import verify_tree


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ns: dict[str, tuple[str, bytes]] = {}
        for model in ("org/alpha", "org/beta"):
            fields = kvfs_fields({"model_name": model, "block_size": 16})
            write_namespace_config(root, fields)
            self.ns[model] = (namespace_name(fields), fingerprint_sha256(fields))

    def block(self, model: str, n: int, *, fingerprint: bytes | None = None, size: int = 3000) -> Path:
        ns, fp = self.ns[model]
        key = BlockKey(ns, 0, 0, f"{n:03x}{n:029x}", "kvfs")
        path = self.root / key.relpath()
        ident = BlockIdentity(fingerprint or fp, b"key-%d" % n)
        assert store_block(path, os.urandom(size), ident).outcome is StoreOutcome.STORED
        return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    root = tmp_path / "root"
    root.mkdir()
    return Store(root)


def damage(store: Store) -> dict[str, str]:
    """Blocks 1..4 of alpha are sound; 5..9 are damaged in different ways.  Returns relpath -> expected reason."""
    for n in range(1, 5):
        store.block("org/alpha", n)
    flipped = store.block("org/alpha", 5)
    with open(flipped, "r+b") as fh:
        fh.seek(HEADER_SIZE + 10)
        byte = fh.read(1)
        fh.seek(HEADER_SIZE + 10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    truncated = store.block("org/alpha", 6)
    os.truncate(truncated, HEADER_SIZE + 100)
    garbage = store.block("org/alpha", 7)
    garbage.write_bytes(b"\0" * 5000)
    _, beta_fp = store.ns["org/beta"]
    foreign = store.block("org/alpha", 8, fingerprint=beta_fp)  # beta's block in alpha's directory
    grown = store.block("org/alpha", 9)
    with open(grown, "ab") as fh:
        fh.write(b"trailing")
    rel = lambda p: str(p.relative_to(store.root))  # noqa: E731
    return {
        rel(flipped): "checksum_mismatch",
        rel(truncated): "truncated",
        rel(garbage): "bad_magic",
        rel(foreign): "fingerprint_mismatch",
        rel(grown): "bad_header",
    }


@pytest.mark.parametrize("threads", [1, 4])
def test_every_damage_is_found_with_its_reason(store: Store, threads: int) -> None:
    expected = damage(store)
    result = verify_tree(store.root, threads=threads)
    assert result.checked == 9
    assert {c.path: c.reason for c in result.corrupt} == expected
    assert result.deleted == 0
    assert all((store.root / path).exists() for path in expected)


def test_namespace_filter_and_bin_files(store: Store) -> None:
    store.block("org/alpha", 1)
    store.block("org/beta", 2)
    beta, _ = store.ns["org/beta"]
    raw = store.root / f"{beta}_r0/abc/de_g0/abcde{'0' * 27}.bin"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"raw stock vLLM bytes")
    result = verify_tree(store.root, namespace=beta)
    assert (result.checked, result.bin_files, result.corrupt) == (1, 1, [])


def test_symlinked_block_is_not_followed(store: Store, tmp_path: Path) -> None:
    path = store.block("org/alpha", 1)
    outside = tmp_path / "outside"
    outside.write_bytes(b"junk that would fail every check")
    path.unlink()
    path.symlink_to(outside)
    result = verify_tree(store.root, delete_corrupt=True)
    assert (result.checked, result.corrupt) == (0, [])
    assert outside.exists() and path.is_symlink()


def test_cli_reports_json_and_exits_1_on_corruption(store: Store, sqlite_url: str) -> None:
    expected = damage(store)
    runner = CliRunner()
    args = ["--root", str(store.root), "--catalog", sqlite_url, "verify"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert {"checked", "corrupt"} <= set(out)
    assert out["checked"] == 9
    assert all(set(c) == {"path", "reason"} for c in out["corrupt"])
    assert {c["path"]: c["reason"] for c in out["corrupt"]} == expected
    text = runner.invoke(main, args)
    assert text.exit_code == 1 and "checksum_mismatch" in text.output and "5 corrupt" in text.output


def test_cli_delete_corrupt_removes_files_and_rows(store: Store, catalog_url: str) -> None:
    expected = damage(store)
    runner = CliRunner()
    base = ["--root", str(store.root), "--catalog", catalog_url]
    assert runner.invoke(main, [*base, "scan"]).exit_code == 0
    result = runner.invoke(main, [*base, "verify", "--delete-corrupt", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["deleted"] == 5 and len(out["corrupt"]) == 5
    assert not any((store.root / path).exists() for path in expected)
    with Catalog.open(catalog_url) as catalog:
        assert catalog.block_count() == 4
        (entry,) = catalog.eviction_log()
        assert (entry.reason, entry.files) == ("corrupt", 5)
    again = runner.invoke(main, [*base, "verify", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout) | {"duration_s": 0} == {
        "checked": 4,
        "checked_bytes": 4 * (HEADER_SIZE + 3000),
        "corrupt": [],
        "unreadable": [],
        "bin_files": 0,
        "deleted": 0,
        "deleted_bytes": 0,
        "duration_s": 0,
    }
