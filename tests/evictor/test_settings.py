"""Settings: sources, precedence, parsing, errors, and the documented table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evictor.cli import evictor
from evictor.settings import (
    SETTINGS_SCHEMA,
    Settings,
    SettingsError,
    describe_settings,
    load_settings,
    setting_names,
)
from kvfs.policy import DEFAULT_POLICY

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_schema() -> None:
    s = load_settings({}, environ={})
    assert s.high_watermark == 85 and s.low_watermark == 70
    assert s.min_age == 600 and s.orphan_grace == 3600 and s.enforce_interval == 5
    assert s.scan_interval == 3600 and s.journal_interval == 1 and s.metrics_port == 9400
    assert s.watch == "inotify" and s.log_format == "text" and not s.dry_run
    assert s.max_bytes is None and s.ttl is None and s.quotas == {} and s.retire == ()
    assert s.policy == DEFAULT_POLICY
    assert s.catalog.startswith("sqlite:///")
    assert setting_names() == list(SETTINGS_SCHEMA)
    # every default written in the schema parses to the dataclass default
    from evictor.settings import parse_value

    for name, spec in SETTINGS_SCHEMA.items():
        if spec.default and name != "catalog":
            value = parse_value(name, spec.default, "schema")
            default = getattr(Settings(), name)
            assert value == default, name


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "evictor.yaml"
    cfg.write_text(
        "root: /from/file\nmax_bytes: 10GiB\nttl: 2h\nhigh_watermark: 90\nquotas:\n  ns_a: 1G\n  ns_b: 2000\n"
        "retire: [old_model]\nwatch: polling\n"
    )
    env = {"KVFS_MAX_BYTES": "20G", "KVFS_TTL": "3h", "KVFS_UNRELATED": "x"}
    s = load_settings({"ttl": "4h", "config": str(cfg)}, environ=env)
    assert s.root == Path("/from/file")  # file only
    assert s.max_bytes == 20 * 10**9  # env beats file
    assert s.ttl == 4 * 3600  # flag beats env
    assert s.high_watermark == 90 and s.watch == "polling"
    assert s.quotas == {"ns_a": 10**9, "ns_b": 2000}
    assert s.retire == ("old_model",)
    assert s.config == cfg


def test_toml_config_and_env_lists(tmp_path: Path) -> None:
    cfg = tmp_path / "evictor.toml"
    cfg.write_text('root = "/data"\nmin_age = "30s"\ndry_run = true\n[quotas]\nns_a = "5GiB"\n')
    s = load_settings(
        {}, environ={"KVFS_CONFIG": str(cfg), "KVFS_RETIRE": "a, b", "KVFS_QUOTAS": "x=1K,y=2K"}
    )
    assert s.min_age == 30 and s.dry_run is True and s.root == Path("/data")
    assert s.quotas == {"x": 1000, "y": 2000}  # env replaces the file's mapping
    assert s.retire == ("a", "b")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"high_watermark": "150"}, "high_watermark"),
        ({"low_watermark": "90"}, "must be below"),
        ({"watch": "fanotify"}, "not one of"),
        ({"quotas": ("no-equals-sign",)}, "NAMESPACE=SIZE"),
        ({"enforce_interval": "0"}, "enforce_interval must be positive"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(flags, environ={})


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_byte: 10G\n")
    with pytest.raises(SettingsError, match="unknown setting 'max_byte'"):
        load_settings({"config": str(cfg)}, environ={})
    cfg.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings({"config": str(cfg)}, environ={})
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({"config": str(tmp_path / "missing.yaml")}, environ={})


def test_docs_list_every_setting_with_its_default() -> None:
    doc = (REPO / "docs" / "evictor.md").read_text()
    assert describe_settings() in doc, "docs/evictor.md settings table is stale: paste describe_settings()"


def test_cli_rejects_bad_flag_with_a_clear_message() -> None:
    result = CliRunner().invoke(evictor, ["run", "--root", "/x", "--max-bytes", "huge"])
    assert result.exit_code == 2
    assert "max_bytes" in result.output and "not a size" in result.output


def test_status_without_a_service_says_so() -> None:
    result = CliRunner().invoke(evictor, ["status", "--url", "http://127.0.0.1:9", "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "no evictor answers" in result.output


def test_status_falls_back_to_the_catalog(sqlite_url: str) -> None:
    from kvfs.catalog import BlockRow, Catalog
    from kvfs.layout import BlockKey

    with Catalog.open(sqlite_url) as cat:
        key = BlockKey("org_m_0123456789ab", 0, 0, "ab" * 16, "kvfs")
        cat.upsert_blocks([BlockRow(key, 4096, 1.0, 2.0)])
        cat.log_eviction(3.0, "org_m_0123456789ab", "ttl", 7, 7 * 4096)
    args = ["status", "--url", "http://127.0.0.1:9", "--timeout", "0.5", "--catalog", sqlite_url]
    result = CliRunner().invoke(evictor, args)
    assert result.exit_code == 0, result.output
    assert "not reachable (catalog view)" in result.output and "catalog: 1 files, 4.0 KiB" in result.output
    assert "ttl: 7 files" in result.output
    data = json.loads(CliRunner().invoke(evictor, [*args, "--json"]).output)
    assert data["usage"]["catalog_files"] == 1 and data["recent_evictions"][0]["reason"] == "ttl"


def catalog_with_one_block(sqlite_url: str) -> None:
    from kvfs.catalog import BlockRow, Catalog
    from kvfs.layout import BlockKey

    with Catalog.open(sqlite_url) as cat:
        cat.upsert_blocks([BlockRow(BlockKey("org_m_0123456789ab", 0, 0, "ab" * 16, "kvfs"), 4096, 1.0, 2.0)])


def test_status_reads_the_catalog_given_to_kvfs_or_in_kvfs_catalog(sqlite_url: str) -> None:
    from kvfs.cli import main

    catalog_with_one_block(sqlite_url)
    status = ["evictor", "status", "--url", "http://127.0.0.1:9", "--timeout", "500ms"]
    for args, env in (
        (["--catalog", sqlite_url, *status], {"KVFS_CATALOG": None}),
        (status, {"KVFS_CATALOG": sqlite_url}),
        (["--catalog", "sqlite:////nonexistent/x.db", *status, "--catalog", sqlite_url], {}),  # own flag wins
    ):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, (args, result.output)
        assert "catalog: 1 files, 4.0 KiB" in result.output
    # Neither: the group's default (a local file) is not some evictor's catalog; say how to give one.
    result = CliRunner().invoke(main, status, env={"KVFS_CATALOG": None})
    assert result.exit_code == 1 and "KVFS_CATALOG" in result.output


def test_status_timeout_is_a_duration() -> None:
    result = CliRunner().invoke(
        evictor, ["status", "--url", "http://127.0.0.1:9", "--timeout", "2 fortnights"]
    )
    assert result.exit_code == 2 and "--timeout" in result.output
    result = CliRunner().invoke(evictor, ["status", "--url", "http://127.0.0.1:9", "--timeout", "250ms"])
    assert result.exit_code == 1 and "no evictor answers" in result.output


def test_run_help_shows_value_kinds_and_each_environment_variable() -> None:
    from evictor.cli import run_cmd

    text = CliRunner().invoke(run_cmd, ["--help"], terminal_width=400).output
    for flag, metavar in (
        ("--max-bytes", "SIZE"),
        ("--min-age", "DURATION"),
        ("--ttl", "DURATION"),
        ("--high-watermark", "PERCENT"),
        ("--catalog", "URL"),
        ("--policy", "NAME"),
    ):
        assert f"{flag} {metavar} " in text, flag
    assert " TEXT " not in text
    for name in SETTINGS_SCHEMA:
        assert f"env var: KVFS_{name.upper()}" in text, name


def test_policy_help_lists_the_policies() -> None:
    from evictor.cli import run_cmd
    from kvfs.cli import main
    from kvfs.policy import available_policies

    listing = "Policies: " + ", ".join(available_policies()) + "."
    assert len(available_policies()) > 1
    for cmd, args in ((main, ["gc", "--help"]), (main, ["ls", "--help"]), (run_cmd, ["--help"])):
        text = " ".join(CliRunner().invoke(cmd, args, terminal_width=400).output.split())
        assert listing in text, args
