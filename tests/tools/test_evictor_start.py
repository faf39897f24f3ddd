"""`python -m tools.bench.evictor_start` runs end to end on a tiny tree (dir mode: no mount), so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_startbench_runs_both_contestants(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.evictor_start", "--files", "400", "--file-kib", "4", "--runs", "1",
         "--fs", "dir", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kvfs-evictor: first pass" in proc.stdout and "llm-d-style crawl: under target" in proc.stdout
    figures = json.loads(out.read_text())
    kvfs, crawl = figures["median"]["kvfs"], figures["median"]["crawl"]
    # 90% full, target 70%: both delete about 2/9 of the files; kvfs takes exactly the oldest.
    assert 80 <= kvfs["deleted"] <= 100 and 80 <= crawl["deleted"] <= 100
    assert kvfs["oldest_share"] == 1.0
    assert kvfs["final_usage_pct"] <= 70.0 and crawl["final_usage_pct"] <= 70.0
    assert kvfs["dirs_left"] < kvfs["dirs_before"] == crawl["dirs_left"]  # only kvfs removes emptied dirs
    assert figures["runs"]["kvfs"][0]["inotify_overflow"] is False
