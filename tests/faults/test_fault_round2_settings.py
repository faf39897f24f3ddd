"""Issue 20, item 8: settings that crashed or were silently misread.

A 400-digit --max-bytes (flag, KVFS_MAX_BYTES, `kvfs gc`), `delete_batch: .inf`, a non-numeric PostgreSQL
port gave tracebacks; 99999999d intervals killed a thread (OverflowError); `.nan` durations, a zero poll
interval, an empty `catalog:`, `metrics_port: 1.5`, `--high-watermark 0.85` were silently accepted.
Every one must be one line on stderr and exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from faultlib import env

from evictor.settings import SettingsError, load_settings
from kvfs.cli import main
from kvfs.units import parse_duration, parse_size

BIG = "9" * 400

# (config-file text, environment, flags): each must be refused with a one-line error naming the setting.
BAD_CONFIGS = {
    "max_bytes_400_digits_flag": ("", {}, ["--max-bytes", BIG]),
    "max_bytes_400_digits_env": ("", {"KVFS_MAX_BYTES": BIG}, []),
    "max_bytes_400_digits_file": (f"max_bytes: {BIG}\n", {}, []),
    "delete_batch_inf": ("delete_batch: .inf\n", {}, []),
    "delete_batch_float": ("delete_batch: 2.5\n", {}, []),
    "pg_port_not_a_number": ("catalog: postgresql://u@127.0.0.1:abc/db\n", {}, []),
    "scan_interval_huge": ("", {}, ["--scan-interval", "99999999d"]),
    "journal_interval_huge": ("", {}, ["--journal-interval", "99999999d"]),
    "watch_poll_interval_huge": ("", {}, ["--watch-poll-interval", "99999999d"]),
    "watch_poll_interval_zero": ("", {}, ["--watch-poll-interval", "0"]),
    "min_age_nan": ("min_age: .nan\n", {}, []),
    "ttl_nan": ("ttl: .nan\n", {}, []),
    "ttl_inf": ("ttl: .inf\n", {}, []),
    "catalog_empty": ("catalog:\n", {}, []),
    "metrics_port_fraction": ("metrics_port: 1.5\n", {}, []),
    "metrics_port_too_big": ("", {}, ["--metrics-port", "70000"]),
    "high_watermark_fraction": ("", {}, ["--high-watermark", "0.85", "--low-watermark", "0.5"]),
    "low_watermark_nan": ("low_watermark: .nan\n", {}, []),
}


def _run_evictor(
    tmp_path: Path, text: str, environ: dict[str, str], flags: list[str]
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "evictor.yaml"
    config.write_text(text or "{}\n")
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "evictor",
        "--root",
        str(root),
        "--config",
        str(config),
        "--metrics-port",
        "0",
    ]
    # Flags given twice: click keeps the last, so the case's own --metrics-port wins over the default above.
    return subprocess.run(
        [*argv, *flags], capture_output=True, text=True, env={**env(), **environ}, cwd=tmp_path, timeout=20
    )


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_absurd_setting_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    text, environ, flags = BAD_CONFIGS[case]
    proc = _run_evictor(tmp_path, text, environ, flags)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, proc.stderr
    assert not (tmp_path / "None").exists()  # an empty catalog used to create an SQLite file named None


def test_kvfs_gc_refuses_a_400_digit_max_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = CliRunner().invoke(
        main, ["--root", str(root), "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "gc", "--max-bytes", BIG]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("text", [BIG, f"{BIG}GiB", "5EiB", "1e400", str(2**62 + 1)])
def test_sizes_are_bounded(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
    assert parse_size(str(2**62)) == 2**62


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "99999999d", "11000d", -1.0])
def test_durations_are_finite_and_bounded(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]
    assert parse_duration("3650d") == 3650 * 86400.0


def test_watermark_percent_and_bounds_in_process() -> None:
    with pytest.raises(SettingsError, match="write 85"):  # before: 0.85 % (with a low watermark below it)
        load_settings({"high_watermark": "0.85", "low_watermark": "0.5"}, environ={})
    assert load_settings({"high_watermark": "90%"}, environ={}).high_watermark == 90.0
    assert load_settings({"metrics_port": "0"}, environ={}).metrics_port == 0  # any free port, as documented
