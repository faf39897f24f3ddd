"""`make demo` (`python -m tools.demo`): the quick configuration end to end, twice, in real subprocesses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run_demo(data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KVFS_DEMO_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "tools.demo", "--quick", "--dir", str(data)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_quick_demo_runs_the_system_end_to_end_twice(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    for attempt in (1, 2):  # the second run recreates the folder it made
        out = run_demo(data)
        assert out.returncode == 0, f"run {attempt}:\n{out.stdout}\n{out.stderr}"
        text = out.stdout
        assert "is leader" in text and "summary" in text
        assert_printed_du_works(text, data)
        assert re.search(r"requests served\s+150 ", text), text
        assert re.search(r"\b0 bad payloads", text), text
        evicted = int(re.search(r"evicted\s+(\d+) files \(.*by kvfs-evictor", text).group(1))
        assert evicted > 0, text  # the cap is well below the trace's footprint: the evictor must have worked
        assert "evictor exit code    0" in text
    # Everything is in the one folder: the tree, the catalog, the trace and the evictor's log.
    for name in ("root", "catalog.db", "trace.jsonl", "evictor.log", ".kvfs-demo"):
        assert (data / name).exists(), name
    files = [p for p in (data / "root").rglob("*.kvfs") if p.is_file()]
    assert files and all(p.stat().st_size > 4096 for p in files)


def assert_printed_du_works(text: str, data: Path) -> None:
    """The `kvfs du` line the demo prints runs as printed (its environment assignments, nothing else)."""
    (line,) = [x[2:] for x in text.splitlines() if x.startswith("$ ") and x.endswith(" kvfs du")]
    words = shlex.split(line)
    assigned = dict(w.split("=", 1) for w in words[:-2])
    assert set(assigned) == {"KVFS_ROOT", "KVFS_CATALOG"} and words[-2:] == ["kvfs", "du"]
    assert assigned["KVFS_ROOT"] == str(data.resolve() / "root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVFS_")}
    env["HOME"] = str(data / "home")  # the default catalog would be here: it must not be what du reads
    out = subprocess.run(
        [sys.executable, "-m", "kvfs.cli", "du"],
        cwd=REPO,
        env={**env, **assigned},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "total" in out.stdout.lower(), out.stdout


def test_demo_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.demo", "-h"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--dir" in out.stdout


def test_demo_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    out = run_demo(precious)
    assert out.returncode != 0 and "was not created by the demo" in (out.stdout + out.stderr)
    assert (precious / "keep.txt").read_text() == "mine"
