"""Emptied bucket directories are removed while writers publish into them: a writer that loses its directory
between mkdir and open (or between two mkdirs) creates it again, so no store fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.layout import BlockKey
from kvfs.safety import RootGuard

NS = "org_racer_0123456789ab"
NS_R0 = f"{NS}_r0"
# A process that sweeps the namespace's empty bucket directories away every few microseconds: far harsher than
# an evictor, which tries a directory once, just after emptying it.
REAPER = textwrap.dedent(
    """
    import os, random, sys, time
    from kvfs.safety import RootGuard
    root, ns, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    guard = RootGuard(root)
    tops = [f"{ns}_r0/{i:03x}" for i in range(4)]
    leaves = [f"{t}/{j:02x}_g0" for t in tops for j in range(4)]
    removed = 0
    while not os.path.exists(stop):
        removed += guard.rmdir_empty(leaves + tops)
        time.sleep(random.random() * 1e-4)
    print(removed)
    """
)


def test_stores_never_fail_while_empty_directories_are_removed(tmp_path: Path, block_io: str) -> None:
    # On both block-file paths: the compiled one creates the directories inside its store call.
    root = tmp_path / "root"
    (root / f"{NS}_r0").mkdir(parents=True)
    stop = tmp_path / "stop"
    reaper = subprocess.Popen(
        [sys.executable, "-c", REAPER, str(root), NS, str(stop)], stdout=subprocess.PIPE, text=True
    )
    outcomes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < deadline:
            # 16 leaf buckets under 4 top buckets; the file is deleted right after, emptying its directories.
            key = BlockKey(NS, 0, 0, f"{n % 4:03x}{n // 4 % 4:02x}{n:027x}", "kvfs")
            path = root / key.relpath()
            res = store_block(path, b"r" * 512, BlockIdentity(b"f" * 32, b"%d" % n))
            outcomes[res.outcome.value] = outcomes.get(res.outcome.value, 0) + 1
            if res.outcome is StoreOutcome.STORED:
                assert path.is_file()
                path.unlink()
            else:
                assert res.outcome is not StoreOutcome.FAILED, res.error
            n += 1
    finally:
        stop.touch()
        out, _ = reaper.communicate(timeout=30)
    removed = int(out)
    assert removed > 100, removed  # the race really ran: directories vanished under the writer many times
    assert outcomes == {"stored": n}
    assert not list(root.rglob("*.tmp"))


def test_rmdir_empty_keeps_namespace_dirs_and_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (outside / "empty").mkdir(parents=True)
    (root / f"{NS}_r0" / "abc" / "de_g0").mkdir(parents=True)
    (root / f"{NS}_r0" / "abd").symlink_to(outside, target_is_directory=True)
    guard = RootGuard(root)
    removed = guard.rmdir_empty(
        [f"{NS}_r0/abc/de_g0", f"{NS}_r0/abd/empty", f"{NS}_r0/abd", "", f"{NS}_r0/missing/x_g0"]
    )
    assert removed == 2  # de_g0 then abc; never the namespace directory (depth 1)
    assert (root / f"{NS}_r0").is_dir()
    assert (outside / "empty").is_dir() and (root / f"{NS}_r0" / "abd").is_symlink()
    assert guard.rmdir_empty(["../outside/empty", "/abs"]) == 0 and (outside / "empty").is_dir()
    os.rmdir(outside / "empty")


def test_rmdir_empty_keeps_recently_changed_directories_for_later(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old, fresh = f"{NS}_r0/abc/de_g0", f"{NS}_r0/abd/de_g0"
    for rel in (old, fresh):
        (root / rel).mkdir(parents=True)
    stamp = time.time() - 3600
    os.utime(root / old, (stamp, stamp))  # emptied an hour ago; `fresh` was just created by a writer
    guard = RootGuard(root)
    young: set[str] = set()
    removed = guard.rmdir_empty([old, fresh], changed_before=time.time() - 60, young=young)
    assert removed == 1 and not (root / old).exists() and (root / fresh).is_dir()
    # abc/ just lost its child (its mtime is now): kept for a later call too, like the writer's directory.
    assert young == {fresh, f"{NS}_r0/abc"} and (root / NS_R0 / "abc").is_dir()
    assert guard.rmdir_empty(young, changed_before=time.time() + 1) == 3  # later: all of them, abd/ too
