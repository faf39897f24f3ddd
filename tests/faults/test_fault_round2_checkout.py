"""Issue 20, item 12: `make test` must pass when the checkout is not readable by other users.  Cloned as root into
a 0700 directory, the two tests whose child runs as an unprivileged user failed with `No module named 'kvfs'`:
the child's PYTHONPATH (the checkout, and the virtual environment in it) was out of its reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faultlib import REPO, env

TESTS = [
    "tests/faults/test_fault_papercuts.py::test_gc_exits_1_when_deletions_fail",
    "tests/faults/test_fault_verify.py::test_delete_corrupt_keeps_unreadable_files_and_reports_unreadable_dirs",
]


_LIST_MODULES = """
import json, os, sys
sys.path[:0] = [os.path.join(sys.argv[1], "tests", "faults"), os.path.join(sys.argv[1], "tests", "evictor")]
import pytest, test_fault_papercuts, test_fault_verify, sqlalchemy.dialects.sqlite
import kvfs.cli.app, kvfs.cli.gc, kvfs.cli.verify, kvfs.cli.scan, kvfs.cli.du, evictor.cli
print(json.dumps({n: getattr(m, "__file__", None) or "" for n, m in sys.modules.items() if "." not in n}))
"""


def _site_modules() -> list[Path]:
    """The third-party modules the two tests and their children import (pytest, kvfs's dependencies)."""
    proc = subprocess.run(
        [sys.executable, "-c", _LIST_MODULES, str(REPO)],
        capture_output=True, text=True, env=env(), check=True, timeout=120,
    )  # fmt: skip
    site_dirs = tuple(p + os.sep for p in sys.path if p.endswith("-packages"))
    out = []
    for name, file in json.loads(proc.stdout).items():
        if not file.startswith(site_dirs) or name.startswith("__editable__"):
            continue
        path = Path(file)
        out.append(path.parent if path.name == "__init__.py" else path)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the children run as another user")
def test_unprivileged_children_run_from_a_checkout_only_root_can_read(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chmod(closed, 0o700)
    checkout = closed / "kvfs"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("kvfs", "evictor", "tests/faults"):
        shutil.copytree(REPO / part, checkout / part, ignore=skip)
    for part in ("tests/conftest.py", "tests/evictor/evictor_helpers.py", "pyproject.toml"):
        (checkout / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / part, checkout / part)
    # The environment inside the closed directory too, as a venv in the clone would be.
    site = closed / "venv" / "site-packages"
    site.mkdir(parents=True)
    for source in _site_modules():
        if source.is_dir():
            shutil.copytree(source, site / source.name, ignore=skip, dirs_exist_ok=True)
        else:
            shutil.copy2(source, site / source.name)
    python = os.path.realpath(sys.executable)  # the base interpreter: no venv site that would rescue imports
    environ = {**env(), "PYTHONPATH": f"{checkout}{os.pathsep}{site}"}
    proc = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::pytest.PytestConfigWarning",
            *TESTS,
        ],
        capture_output=True,
        text=True,
        env=environ,
        cwd=checkout,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout, proc.stdout[-2000:]
