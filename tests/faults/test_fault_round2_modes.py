"""Issue 20, item 11: modes followed the umask where the README promises 0770/0660.  Under umask 000 `.kvfs/` was
0777 and `root-id` 0666 (any local user could rewrite it, and the evictor then exits 2); under umask 077 a second
writer uid of the same group lost every journal record (EACCES on `.kvfs/`, created 0700 as the journal's
parent)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from faultlib import NOBODY, REPO, env

from kvfs.journal import JournalReader

# One writer process: root-id, a namespace, a block, a journal record, all under the given umask.
WRITER = """
import os, sys
os.umask(int(sys.argv[2], 8))
sys.path.insert(0, sys.argv[3])
from faultlib import Store
from kvfs.journal import JournalWriter
from kvfs.layout import ensure_root_id
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
assert ensure_root_id(root)
store = Store(__import__("pathlib").Path(root))
store.block(int(sys.argv[4]))
with JournalWriter(root, writer_id="w" + sys.argv[4]) as journal:
    journal.record_store(store.key(int(sys.argv[4])), 4096)
"""


def _write(
    root: Path, umask: str, n: int, as_user: tuple[int, int] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", WRITER, str(root), umask, str(REPO / "tests" / "faults"), str(n)]
    if as_user is not None:
        argv = ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env(), cwd="/", timeout=120)


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


@pytest.mark.parametrize("umask", ["000", "077", "022"])
def test_modes_are_exact_whatever_the_umask(open_tmp: Path, umask: str) -> None:
    root = open_tmp / "root"
    proc = _write(root, umask, 1)
    assert proc.returncode == 0, proc.stderr
    modes = _modes(root)
    assert modes.pop(".kvfs/root-id") == 0o440
    wrong = {
        rel: oct(mode) for rel, mode in modes.items() if mode != (0o770 if (root / rel).is_dir() else 0o660)
    }
    assert not wrong, wrong


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run two writer uids")
def test_second_writer_of_the_group_keeps_its_journal_under_umask_077(open_tmp: Path) -> None:
    root = open_tmp / "root"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    os.chmod(root, 0o770)
    first = _write(root, "077", 1, as_user=(NOBODY, NOBODY))
    assert first.returncode == 0, first.stderr
    second = _write(root, "077", 2, as_user=(NOBODY - 1, NOBODY))  # another uid, the same group
    assert second.returncode == 0, second.stderr
    names = {r.key.block_hash for r in JournalReader(root).read({}).records}
    assert len(names) == 2, second.stderr
