"""Fixtures of the evictor tests (helpers live in evictor_helpers.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from evictor_helpers import FAST, Evictor


@pytest.fixture
def start_evictor(tmp_path: Path) -> Iterator[Callable[..., Evictor]]:
    started: list[Evictor] = []

    def start(root: Path, catalog: str, *extra: str, name: str = "evictor", wait: bool = True) -> Evictor:
        args = ["--root", str(root), "--catalog", catalog, *FAST, *extra]
        ev = Evictor(tmp_path / f"{name}-{len(started)}.log", args)
        started.append(ev)
        return ev.wait_started() if wait else ev

    yield start
    for ev in started:
        ev.stop(signal.SIGKILL)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path
