"""Fixtures of the fault suite."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="kvfs-fault-"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


# The evictor tests' process helpers (real `kvfs-evictor` processes, writer processes, HTTP probes).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evictor"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evictor_helpers import FAST, Evictor  # noqa: E402


@pytest.fixture
def start_evictor(tmp_path: Path) -> Iterator[Callable[..., Evictor]]:
    """Start real evictor processes; all are killed (and continued, if stopped) at the end of the test."""
    started: list[Evictor] = []

    def start(root: Path, catalog: str, *extra: str, name: str = "evictor", wait: bool = True) -> Evictor:
        ev = Evictor(
            tmp_path / f"{name}-{len(started)}.log",
            ["--root", str(root), "--catalog", catalog, *FAST, *extra],
        )
        started.append(ev)
        return ev.wait_started() if wait else ev

    yield start
    for ev in started:
        if ev.proc.poll() is None:
            ev.proc.send_signal(signal.SIGCONT)
        ev.stop(signal.SIGKILL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here carries the `faults` marker: `pytest -m faults` runs the fault suite's CI part."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.faults)
