"""The `kvfs` CLI through click's runner (real files, real SQLite/PostgreSQL catalogs) and the console script."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import Catalog, ghosts
from kvfs.cli import main
from kvfs.journal import JournalRecord, JournalWriter, RecordKind
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config
from kvfs.policy import DEFAULT_POLICY

PAYLOAD = 512
KVFS_BIN = Path(sys.executable).with_name("kvfs")


class Site:
    """A root with real block files in two namespaces; block n last accessed `age(n)` seconds ago."""

    def __init__(self, root: Path, catalog_url: str) -> None:
        self.root = root
        self.catalog_url = catalog_url
        self.namespaces: dict[str, tuple[str, bytes]] = {}
        self.keys: dict[int, BlockKey] = {}
        self.file_size = 0

    def namespace(self, model: str) -> str:
        fields = kvfs_fields({"model_name": model, "block_size": 16})
        write_namespace_config(self.root, fields)
        self.namespaces[model] = (namespace_name(fields), fingerprint_sha256(fields))
        return namespace_name(fields)

    def block(self, model: str, n: int, age_s: float, *, rank: int = 0) -> BlockKey:
        ns, fp = self.namespaces[model]
        key = BlockKey(ns, rank, 0, f"{n:03x}{n % 256:02x}{n:027x}", "kvfs")
        path = self.root / key.relpath()
        assert store_block(path, b"x" * PAYLOAD, BlockIdentity(fp, b"k%d" % n)).outcome is StoreOutcome.STORED
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
        self.keys[n] = key
        self.file_size = path.stat().st_size
        return key

    def path(self, n: int) -> Path:
        return self.root / self.keys[n].relpath()

    def present(self) -> set[int]:
        return {n for n in self.keys if self.path(n).exists()}

    def invoke(self, *args: str, env: dict[str, str] | None = None):
        runner = CliRunner()
        return runner.invoke(main, ["--root", str(self.root), "--catalog", self.catalog_url, *args], env=env)

    def json(self, *args: str) -> dict:
        result = self.invoke(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def site(tmp_path: Path, catalog_url: str) -> Site:
    root = tmp_path / "root"
    root.mkdir()
    s = Site(root, catalog_url)
    s.namespace("org/alpha")
    s.namespace("org/beta")
    for n in range(1, 7):  # alpha: 1 (oldest, 6 h) .. 6 (1 h)
        s.block("org/alpha", n, (7 - n) * 3600)
    for n in range(11, 14):  # beta: 11..13, 3 days old, on rank 1
        s.block("org/beta", n, 3 * 86400 + n, rank=1)
    return s


def test_scan_then_du_json_has_the_exact_keys(site: Site) -> None:
    scanned = site.json("scan")
    assert scanned["files"] == 9 and scanned["blocks_added"] == 9
    du = site.json("du")
    assert set(du) == {"total_files", "total_bytes", "namespaces", "temp_files", "filesystem"}
    assert du["total_files"] == 9
    assert du["total_bytes"] == 9 * site.file_size
    assert du["temp_files"] == {"files": 0, "bytes": 0}
    by_ns = {ns["namespace"]: ns for ns in du["namespaces"]}
    alpha, _ = site.namespaces["org/alpha"]
    assert set(by_ns[alpha]) == {"namespace", "model", "files", "bytes", "last_access_min", "last_access_max"}
    assert by_ns[alpha]["files"] == 6 and by_ns[alpha]["model"] == "org/alpha"
    assert by_ns[alpha]["last_access_min"] < by_ns[alpha]["last_access_max"]


def test_du_groups_by_model_rank_and_age(site: Site) -> None:
    site.json("scan")
    by_model = site.json("du", "--by", "model")
    assert set(by_model) == {
        "total_files",
        "total_bytes",
        "namespaces",
        "temp_files",
        "filesystem",
        "by",
        "groups",
    }
    models = {g["model"]: g for g in by_model["groups"]}
    assert models["org/alpha"]["files"] == 6 and models["org/beta"]["files"] == 3
    ranks = site.json("du", "--by", "rank")["groups"]
    assert sorted((g["rank"], g["files"]) for g in ranks) == [(0, 6), (1, 3)]
    ages = {g["age"]: g["files"] for g in site.json("du", "--by", "age")["groups"]}
    assert ages == {"<1h": 0, "1h-1d": 6, "1d-7d": 3, "7d-30d": 0, ">=30d": 0}
    table = site.invoke("du", "--by", "age")
    assert table.exit_code == 0 and "1h-1d" in table.output and "total: 9 files" in table.output


def test_du_shows_the_filesystem_beside_the_catalog(site: Site) -> None:
    site.json("scan")
    fs = site.json("du")["filesystem"]
    st = os.statvfs(site.root)
    assert fs["size_bytes"] == st.f_blocks * st.f_frsize
    # Used and available move with other writers on this disk: the same figures within a few MiB.
    assert abs(fs["used_bytes"] - (st.f_blocks - st.f_bfree) * st.f_frsize) < 64 << 20
    assert abs(fs["available_bytes"] - st.f_bavail * st.f_frsize) < 64 << 20
    assert fs["use_ratio"] == pytest.approx(fs["used_bytes"] / fs["size_bytes"], abs=1e-6)
    out = site.invoke("du").output
    assert re.search(r"filesystem: .+ used of .+ \(\d+\.\d%, kvfs blocks \d+\.\d%\), .+ available", out), out


def test_du_answers_from_the_catalog_when_the_root_is_not_mounted(site: Site, tmp_path: Path) -> None:
    site.json("scan")
    gone = tmp_path / "not-mounted-here"
    runner = CliRunner()
    result = runner.invoke(main, ["--root", str(gone), "--catalog", site.catalog_url, "du", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["filesystem"] is None and data["total_files"] == 9
    text = runner.invoke(main, ["--root", str(gone), "--catalog", site.catalog_url, "du"])
    assert text.exit_code == 0 and "filesystem: unavailable" in text.output


def test_du_reports_temp_files_of_the_last_scan(site: Site) -> None:
    Catalog.open(
        site.catalog_url, root=site.root
    ).close()  # a catalog no scan has run on yet (du never creates)
    assert site.json("du")["temp_files"] == {"files": 0, "bytes": 0}
    assert "temp files: unknown (no scan recorded" in site.invoke("du").output
    (site.path(1).parent / (site.path(1).name + "_deadbeef.tmp")).write_bytes(b"t" * 100)
    site.json("scan")
    assert site.json("du")["temp_files"] == {"files": 1, "bytes": 100}
    assert "temp files: 1 (100 B) at the last scan" in site.invoke("du").output


def test_ls_lists_a_namespace_in_eviction_order(site: Site) -> None:
    site.json("scan")
    alpha, _ = site.namespaces["org/alpha"]
    listing = site.json("ls", alpha, "--policy", "lru")
    assert [b["path"] for b in listing["blocks"]] == [site.keys[n].relpath() for n in range(1, 7)]
    assert listing["policy"] == "lru"
    assert len(site.json("ls", alpha, "--limit", "2")["blocks"]) == 2
    assert site.json("ls", alpha)["policy"] == DEFAULT_POLICY
    text = site.invoke("ls", alpha, "--limit", "1", "--policy", "lru")
    assert text.exit_code == 0 and site.keys[1].relpath() in text.output
    unknown = site.invoke("ls", "nope_000000000000")
    assert unknown.exit_code != 0 and "unknown namespace" in unknown.output


def test_ls_shows_reuse_and_chain_position(site: Site) -> None:
    """hits and chain_pos (what 2q and slru order on) are shown; unknown positions are null / '-'."""
    site.json("scan")
    alpha, _ = site.namespaces["org/alpha"]
    with Catalog.open(site.catalog_url) as catalog:
        row = catalog.get_blocks([site.keys[2]])[site.keys[2]]
        catalog.upsert_blocks([dataclasses.replace(row, hits=3, chain_pos=7, block_id=None)])
    blocks = {b["path"]: b for b in site.json("ls", alpha, "--policy", "lru")["blocks"]}
    assert (blocks[site.keys[2].relpath()]["hits"], blocks[site.keys[2].relpath()]["chain_pos"]) == (3, 7)
    assert (blocks[site.keys[1].relpath()]["hits"], blocks[site.keys[1].relpath()]["chain_pos"]) == (0, None)
    text = site.invoke("ls", alpha, "--policy", "lru").output
    assert "hits" in text and "chain pos" in text
    line = next(x for x in text.splitlines() if site.keys[2].relpath() in x)
    assert line.split()[-2:] == ["3", "7"]


def test_ls_lists_orphans_then_superseded_leaves_first_and_flags_them(site: Site) -> None:
    # Block 5 was stored behind block 4; block 4's file is deleted (a scan finds it gone, or verify removes
    # it): 5 can never be loaded, so the default policy lists it first although 1-4 are older.
    site.json("scan")
    alpha, _ = site.namespaces["org/alpha"]
    with Catalog.open(site.catalog_url) as catalog:
        # 2 and 3 follow 1; 3 is stored after 2, which was never read: 2 is the branch left behind.
        two = catalog.get_blocks([site.keys[2]])[site.keys[2]]
        parent = site.keys[1].block_hash
        catalog.apply_journal(
            [
                JournalRecord(RecordKind.STORE, site.keys[2], two.last_access, two.size, 1, parent),
                JournalRecord(RecordKind.STORE, site.keys[3], time.time(), two.size, 1, parent),
            ],
            {},
        )
        row = catalog.get_blocks([site.keys[5]])[site.keys[5]]
        catalog.upsert_blocks([dataclasses.replace(row, parent_hash=site.keys[4].block_hash, block_id=None)])
        catalog.remove_blocks([site.keys[4]])
    out = site.json("ls", alpha)
    assert out["policy"] == DEFAULT_POLICY
    assert [(b["path"], b["orphan"], b["superseded"]) for b in out["blocks"]][:3] == [
        (site.keys[5].relpath(), True, False),
        (site.keys[2].relpath(), False, True),
        (site.keys[1].relpath(), False, False),
    ]
    text = site.invoke("ls", alpha).output
    assert "prefix" in text.splitlines()[0]
    assert next(x for x in text.splitlines() if site.keys[5].relpath() in x).split()[-1] == "orphan"
    assert next(x for x in text.splitlines() if site.keys[2].relpath() in x).split()[-1] == "superseded"


def test_gc_dry_run_deletes_nothing(site: Site) -> None:
    site.json("scan")
    out = site.json("gc", "--dry-run", "--max-bytes", str(3 * site.file_size))
    assert {"deleted_files", "deleted_bytes", "by_reason", "dry_run"} <= set(out)
    assert out["dry_run"] is True
    assert out["deleted_files"] == 6  # what it would delete
    assert out["by_reason"] == {"capacity": {"files": 6, "bytes": 6 * site.file_size}}
    assert site.present() == set(site.keys)
    assert site.json("du")["total_files"] == 9


def test_gc_max_bytes_evicts_lru_and_prints_the_plan(site: Site) -> None:
    site.json("scan")
    result = site.invoke("gc", "--policy", "lru", "--max-bytes", str(4 * site.file_size))
    assert result.exit_code == 0, result.output
    assert "capacity" in result.output and "deleted 5 files" in result.output
    # The three 3-day-old beta blocks go first, then alpha's two oldest.
    assert site.present() == {3, 4, 5, 6}
    assert site.json("du")["total_files"] == 4


def test_gc_default_policy_remembers_what_it_evicted(site: Site) -> None:
    # The default policy learns from evicted blocks that come back: `kvfs gc` must record them, as the
    # evictor does (one policy instance plans and executes the pass).
    site.json("scan")
    dry = site.json("gc", "--max-bytes", str(4 * site.file_size), "--dry-run")
    assert dry["deleted_files"] == 5 and site.present() == set(site.keys)
    with Catalog.open(site.catalog_url) as catalog:
        assert ghosts.ghost_counts(catalog, "adaptive") == {}  # a dry run records nothing
    out = site.json("gc", "--max-bytes", str(4 * site.file_size))
    assert out["deleted_files"] == 5 and out["plan"]["policy"] == DEFAULT_POLICY == "adaptive"
    with Catalog.open(site.catalog_url) as catalog:
        assert ghosts.ghost_counts(catalog, "adaptive") == {False: 5}


def test_gc_with_prefix_remembers_what_it_evicted(site: Site) -> None:
    # `prefix` learns from evicted blocks that come back: `kvfs gc` must record them, as the evictor does.
    site.json("scan")
    out = site.json("gc", "--policy", "prefix", "--max-bytes", str(4 * site.file_size))
    assert out["deleted_files"] == 5 and out["plan"]["policy"] == "prefix"
    with Catalog.open(site.catalog_url) as catalog:
        assert ghosts.ghost_counts(catalog, "prefix") == {False: 5}
    dry = site.json("gc", "--policy", "prefix", "--max-bytes", str(2 * site.file_size), "--dry-run")
    assert dry["deleted_files"] == 2
    with Catalog.open(site.catalog_url) as catalog:
        # A dry run records nothing (its two victims, 1-4 h old, would be ghosts within the horizon); its settle
        # step dropped the older ghosts, beyond one recency span of the blocks left.
        assert ghosts.ghost_counts(catalog, "prefix") == {}


def test_gc_with_s3fifo_deletes_files_and_keeps_its_queue_state(site: Site) -> None:
    # Rows a scan finds enter the small queue at its head, unread: a pass takes them as small-queue victims and
    # keeps their keys as FIFO ghosts; a dry run before it changes nothing.
    site.json("scan")
    dry = site.json("gc", "--policy", "s3fifo", "--max-bytes", str(4 * site.file_size), "--dry-run")
    assert dry["deleted_files"] == 5 and site.present() == set(site.keys)
    with Catalog.open(site.catalog_url) as catalog:
        assert catalog.fifo_ghost_keys() == []
    out = site.json("gc", "--policy", "s3fifo", "--max-bytes", str(4 * site.file_size))
    assert out["deleted_files"] == 5 and out["plan"]["policy"] == "s3fifo"
    assert len(site.present()) == 4
    with Catalog.open(site.catalog_url) as catalog:
        # Bounded by the main queue's share of what stays: 4 blocks stay, less small's 10%: 3 ghosts.
        assert len(catalog.fifo_ghost_keys()) == 3


def test_gc_scans_first_when_the_catalog_is_empty(site: Site) -> None:
    out = site.json("gc", "--ttl", "2d")
    assert out["scan"] is not None and out["scan"]["files"] == 9
    assert out["deleted_files"] == 3 and out["by_reason"] == {
        "ttl": {"files": 3, "bytes": 3 * site.file_size}
    }
    assert site.present() == set(range(1, 7))


def test_gc_retire_namespace_and_orphans(site: Site) -> None:
    beta, _ = site.namespaces["org/beta"]
    old_tmp = site.path(1).parent / (site.path(1).name + "_0123abcd.tmp")
    new_tmp = site.path(2).parent / (site.path(2).name + "_4567cdef.tmp")
    for tmp, age_s in ((old_tmp, 7200), (new_tmp, 5)):
        tmp.write_bytes(b"partial")
        os.utime(tmp, (time.time() - age_s, time.time() - age_s))
    out = site.json("gc", "--retire", beta, "--orphans-older-than", "1h")
    assert out["by_reason"]["retired"]["files"] == 3
    assert out["by_reason"]["orphan"] == {"files": 1, "bytes": 7}
    assert not old_tmp.exists() and new_tmp.exists()
    assert site.present() == set(range(1, 7))


def test_gc_namespace_scope(site: Site) -> None:
    alpha, _ = site.namespaces["org/alpha"]
    out = site.json("gc", "--policy", "lru", "--namespace", alpha, "--max-bytes", str(4 * site.file_size))
    assert out["deleted_files"] == 2
    assert site.present() == {3, 4, 5, 6, 11, 12, 13}


def test_gc_ingests_journals_before_planning(site: Site) -> None:
    site.json("scan")
    with JournalWriter(site.root, writer_id="engine-a") as writer:
        writer.record_access(site.keys[1])  # the oldest alpha block was just read
    out = site.json(
        "gc",
        "--policy",
        "lru",
        "--namespace",
        site.namespaces["org/alpha"][0],
        "--max-bytes",
        str(5 * site.file_size),
    )
    assert out["journal_records_ingested"] == 1
    assert site.present() >= {1} and not site.path(2).exists()


def test_gc_never_deletes_through_a_planted_symlink(site: Site, tmp_path: Path) -> None:
    site.json("scan")
    outside = tmp_path / "outside.kvfs"
    outside.write_bytes(b"not yours")
    site.path(1).unlink()
    site.path(1).symlink_to(outside)
    out = site.json("gc", "--max-bytes", "0")
    assert outside.read_bytes() == b"not yours"
    assert site.path(1).is_symlink()
    assert out["deleted_files"] == 8 and out["refused"] == 1


def test_policy_option(site: Site) -> None:
    bad = site.invoke("gc", "--policy", "nope", "--dry-run")
    assert bad.exit_code == 2 and "unknown policy 'nope'" in bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gc", "--max-bytes", "12parsecs"], "not a size"),
        (["gc", "--ttl", "soon"], "not a duration"),
        (["gc", "--min-age", "-5s"], "not a duration"),
        (["du", "--by", "colour"], "Invalid value for '--by'"),
    ],
)
def test_bad_values_give_one_line(site: Site, args: list[str], message: str) -> None:
    result = site.invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def one_line_failure(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_root(tmp_path: Path, sqlite_url: str) -> None:
    runner = CliRunner()
    for command in ("scan", "gc", "verify"):
        result = runner.invoke(main, ["--root", str(tmp_path / "missing"), "--catalog", sqlite_url, command])
        assert "does not exist" in one_line_failure(result)
    afile = tmp_path / "file"
    afile.write_text("")
    result = runner.invoke(main, ["--root", str(afile), "--catalog", sqlite_url, "scan"])
    assert result.exit_code == 2 and "is a file" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "mysql://someone@localhost/kvfs",
        "postgresql+psycopg://nobody@127.0.0.1:1/nothing",
        "sqlite:///:memory:",
        "sqlite:///" + "/proc/no/such/dir/c.db",
    ],
)
def test_bad_catalog_url(tmp_path: Path, url: str) -> None:
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "--catalog", url, "du"])
    assert "Traceback" not in result.output
    one_line_failure(result)


def test_sqlite_catalog_inside_the_root_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "--catalog", str(tmp_path / "c.db"), "du"])
    assert "unsafe" in one_line_failure(result)
    assert not (tmp_path / "c.db").exists()


def test_environment_variables(site: Site) -> None:
    result = CliRunner().invoke(
        main, ["scan", "--json"], env={"KVFS_ROOT": str(site.root), "KVFS_CATALOG": site.catalog_url}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == 9


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("scan", "du", "ls", "gc", "verify"):
        assert f"  {command} " in result.output


@pytest.mark.slow
def test_installed_console_script(tmp_path: Path) -> None:
    assert KVFS_BIN.exists(), f"console script not installed at {KVFS_BIN}"
    root = tmp_path / "root"
    root.mkdir()
    site = Site(root, f"sqlite:///{tmp_path / 'catalog.db'}")
    site.namespace("org/alpha")
    site.block("org/alpha", 1, 60)
    env = {**os.environ, "KVFS_ROOT": str(root), "KVFS_CATALOG": site.catalog_url}
    scan = subprocess.run([KVFS_BIN, "scan", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert scan.returncode == 0, scan.stderr
    assert json.loads(scan.stdout)["files"] == 1
    du = subprocess.run([KVFS_BIN, "du"], env=env, capture_output=True, text=True, timeout=120)
    assert du.returncode == 0 and "total: 1 files" in du.stdout
    bad = subprocess.run(
        [KVFS_BIN, "--root", str(tmp_path / "nope"), "gc"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout


def test_optional_commands_are_listed_only_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvfs.cli import app

    monkeypatch.setattr(
        app,
        "OPTIONAL_COMMANDS",
        {"usage-again": "kvfs.cli.du:du", "ghost": "kvfs_no_such_package.cli:ghost"},
    )
    listing = CliRunner().invoke(main, ["--help"])
    assert "usage-again" in listing.output and "ghost" not in listing.output
    missing = CliRunner().invoke(main, ["ghost"])
    assert missing.exit_code == 2 and "No such command 'ghost'" in missing.output
    lazy = CliRunner().invoke(main, ["usage-again", "--help"])
    assert lazy.exit_code == 0 and "--by" in lazy.output


def test_journal_segments_are_kept_unless_asked(site: Site) -> None:
    journal = site.root / ".kvfs" / "journal"
    with JournalWriter(site.root, writer_id="engine-b") as writer:
        writer.record_access(site.keys[3])
    segments = sorted(p.name for p in journal.iterdir())
    assert segments
    first = site.json("scan")
    assert first["journal_records_ingested"] == 1 and first["journal_segments_removed"] == 0
    assert sorted(p.name for p in journal.iterdir()) == segments
    dry = site.json("gc", "--dry-run", "--remove-journals")
    assert dry["journal_segments_removed"] == 0 and sorted(p.name for p in journal.iterdir()) == segments
    out = site.json("gc", "--remove-journals")
    assert out["journal_records_ingested"] == 0  # applied once, by the scan
    assert out["journal_segments_removed"] == len(segments)
    assert list(journal.iterdir()) == []


def test_verify_refuses_an_unknown_namespace_like_gc_and_ls(site: Site) -> None:
    ns, _ = site.namespaces["org/alpha"]
    ok = site.invoke("verify", "--namespace", ns)
    assert ok.exit_code == 0, ok.output
    typo = site.invoke("verify", "--namespace", ns + "x")
    assert typo.exit_code == 2 and "unknown namespace" in typo.output and ns in typo.output


def test_gc_retire_typo_on_the_command_line_is_an_error_but_a_settings_one_is_skipped(
    site: Site, tmp_path
) -> None:
    site.namespace("org/alpha")
    result = site.invoke("gc", "--retire", "org_typo_0123456789ab", "--dry-run")
    assert result.exit_code == 2 and "unknown namespace 'org_typo_0123456789ab'" in result.output
    config = tmp_path / "evictor.yaml"
    config.write_text("retire: [org_typo_0123456789ab]\n")
    result = site.invoke("gc", "--config", str(config), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["unknown_namespaces"] == ["org_typo_0123456789ab"]


def test_output_into_a_closed_pipe_exits_0(tmp_path) -> None:
    """`kvfs ls NS | head -1`: the reader has left before kvfs writes.  Before, click's main turned the broken
    pipe into exit 1."""
    import subprocess
    import sys

    (tmp_path / "root").mkdir()
    site = Site(tmp_path / "root", f"sqlite:///{tmp_path / 'c.db'}")
    ns = site.namespace("org/pipe")
    for n in range(60):
        site.block("org/pipe", n, age_s=100 + n)
    assert site.invoke("scan").exit_code == 0
    env = {**os.environ, "KVFS_ROOT": str(site.root), "KVFS_CATALOG": site.catalog_url}
    codes = []
    for limit in ("50", "0"):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first write
        done = subprocess.run(
            [sys.executable, "-m", "kvfs.cli", "ls", ns, "--limit", limit],
            stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60,
        )  # fmt: skip
        os.close(write_end)
        codes.append((done.returncode, done.stderr.decode()[-200:]))
    assert codes == [(0, ""), (0, "")]
