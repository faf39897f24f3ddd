"""Issue 20, item 5: a second evictor on the same SQLite catalog through a symlink or a hard link to the db file
was not refused (the lock was `<path as given>.lock`): records applied twice, double deletes, and with a hard
link `database disk image is malformed` (SQLite names its WAL after the path it was given)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from evictor_helpers import Evictor


@pytest.mark.parametrize("link", ["symlink", "hardlink", "symlinked_dir"])
def test_second_evictor_through_another_name_is_refused(
    tmp_path: Path, start_evictor: Callable[..., Evictor], link: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    db = state / "catalog.db"
    first = start_evictor(root, f"sqlite:///{db}")
    first.wait_leader()
    assert db.exists()
    other = tmp_path / "other"
    other.mkdir()
    if link == "symlink":
        alias = other / "alias.db"
        alias.symlink_to(db)
    elif link == "hardlink":
        alias = other / "alias.db"
        os.link(db, alias)
    else:
        (other / "state-link").symlink_to(state)
        alias = other / "state-link" / "catalog.db"
    second = start_evictor(root, f"sqlite:///{alias}", name="second", wait=False)
    assert second.proc.wait(30) == 3, second.log()
    assert "catalog" in second.log() and "Traceback" not in second.log()
    assert first.proc.poll() is None and first.status()["leader"]
