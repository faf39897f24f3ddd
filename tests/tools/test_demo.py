"""`make demo` (`python -m tools.demo`): the quick configuration end to end, twice, in real subprocesses."""

from __future__ import annotations

import os
import re
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
        assert "is leader" in text and "$ kvfs du" in text and "summary" in text
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


def test_demo_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    out = run_demo(precious)
    assert out.returncode != 0 and "was not created by the demo" in (out.stdout + out.stderr)
    assert (precious / "keep.txt").read_text() == "mine"
