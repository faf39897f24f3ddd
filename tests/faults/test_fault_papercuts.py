"""Issue 13, item 9: what a new user ran into.  Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
from click.testing import CliRunner
from faultlib import REPO, Store, chown_tree, env, kvfs_cli

from evictor.cli import run_cmd
from kvfs.blockfile import HEADER_SIZE
from kvfs.cli import main
from kvfs.journal import JournalWriter


def _evictor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evictor", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=timeout,
    )


def test_du_with_a_missing_root_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(
        main,
        ["--root", str(tmp_path / "nope"), "du"],
        env={"XDG_STATE_HOME": str(state), "KVFS_CATALOG": None},
    )
    # du answers from the catalog alone (the root need not be mounted here), so the error is the missing catalog.
    assert result.exit_code == 1 and "run `kvfs scan` first" in result.stderr
    assert not state.exists()


def test_read_commands_never_create_a_catalog(tmp_path: Path, pg_url: str) -> None:
    store = Store(tmp_path / "root")
    sqlite = tmp_path / "cat" / "catalog.db"
    for url in (f"sqlite:///{sqlite}", pg_url):
        for command in (["du"], ["du", "--by", "model"], ["ls", store.namespace]):
            result = CliRunner().invoke(
                main, ["--root", str(store.root), "--catalog", url, *command, "--json"]
            )
            assert result.exit_code == 1, result.output
            assert "run `kvfs scan` first" in result.stderr
    assert not sqlite.parent.exists()
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        tables = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    assert tables == []


def test_du_does_not_change_when_a_scan_follows_ingest(tmp_path: Path) -> None:
    """Journal-fed rows carry the file's bytes and the model named in config.json, like scanned rows."""
    store = Store(tmp_path / "root", model="org/model")
    with JournalWriter(store.root, writer_id="w") as journal:
        for n in range(5):
            path = store.block(n, size=65536)
            journal.record_store(store.key(n), path.stat().st_size)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    base = ["--root", str(store.root), "--catalog", url]
    runner = CliRunner()
    assert (
        runner.invoke(main, [*base, "gc", "--no-scan", "--dry-run", "--json"]).exit_code == 0
    )  # ingests only
    before = json.loads(runner.invoke(main, [*base, "du", "--by", "model", "--json"]).stdout)
    assert runner.invoke(main, [*base, "scan", "--json"]).exit_code == 0
    after = json.loads(runner.invoke(main, [*base, "du", "--by", "model", "--json"]).stdout)
    assert before["total_bytes"] == after["total_bytes"] == 5 * (HEADER_SIZE + 65536)
    assert [g["model"] for g in before["groups"]] == [g["model"] for g in after["groups"]] == ["org/model"]


def test_gc_exits_1_when_deletions_fail(open_tmp: Path) -> None:
    store = Store(open_tmp / "root")
    for n in range(4):
        store.block(n)
    stuck = store.block(0xAB0)  # its own bucket directory, made read-only below
    chown_tree(open_tmp)
    stuck.parent.chmod(0o555)
    try:
        rc, out, err = kvfs_cli(
            "--root", str(store.root), "--catalog", f"sqlite:///{open_tmp / 'catalog.db'}",
            "gc", "--max-bytes", "0", "--json", unprivileged=True,
        )  # fmt: skip
    finally:
        stuck.parent.chmod(0o770)
    assert out is not None, err
    assert rc == 1 and out["errors"] == 1 and out["deleted_files"] == 4
    assert "deletions failed" in err and stuck.exists()


def test_bare_kvfs_prints_its_help() -> None:
    result = CliRunner().invoke(main, [])
    assert "Usage:" in result.output and "Commands:" in result.output and "Error:" not in result.output
    assert len(result.output.splitlines()) > 5


def test_evictor_flags_help_version_policy_and_quota() -> None:
    runner = CliRunner()
    for flag in ("-h", "--help"):
        helped = runner.invoke(run_cmd, [flag])
        assert helped.exit_code == 0 and "--max-bytes" in helped.output
    version = runner.invoke(run_cmd, ["--version"])
    assert version.exit_code == 0 and "version" in version.output
    bad_policy = runner.invoke(run_cmd, ["--policy", "nosuch"])
    assert bad_policy.exit_code == 2 and "unknown policy 'nosuch'" in bad_policy.output
    assert bad_policy.exc_info is None or bad_policy.exc_info[0] is SystemExit
    bad_quota = runner.invoke(run_cmd, ["--quota", "foo"])
    assert bad_quota.exit_code == 2 and "--quota:" in bad_quota.output and "--quotas" not in bad_quota.output


def test_kvfs_root_and_catalog_reach_evictor_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-root"
    rc, _out, err = kvfs_cli(
        "--root", str(missing), "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "evictor", "run"
    )
    assert rc == 2 and str(missing) in err


def test_address_in_use_names_the_port(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _evictor(
            "--root", str(store.root), "--catalog", f"sqlite:///{tmp_path / 'c.db'}",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        )  # fmt: skip
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in proc.stdout + proc.stderr


def test_binary_trace_names_file_and_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b'{"hash_ids": [1, 2]}\n' + os.urandom(64) + b"\xff\xfe\n")
    result = CliRunner().invoke(main, ["replay", str(trace), "--capacity", "1"])
    assert result.exit_code == 1 and f"{trace}: line 2" in result.stderr


def test_refused_sqlite_catalog_under_the_root_leaves_no_lock_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    proc = _evictor("--root", str(store.root), "--catalog", f"sqlite:///{store.root / 'catalog.db'}")
    assert proc.returncode == 2
    assert sorted(p.name for p in store.root.iterdir() if "catalog" in p.name) == []


def test_evictor_status_from_the_catalog_creates_nothing(tmp_path: Path) -> None:
    from evictor.cli import status_cmd

    missing = tmp_path / "cat" / "catalog.db"
    result = CliRunner().invoke(
        status_cmd, ["--url", "http://127.0.0.1:9", "--timeout", "0.5", "--catalog", f"sqlite:///{missing}"]
    )
    assert result.exit_code == 1 and "run `kvfs scan` first" in result.output
    assert not missing.parent.exists()
