"""A racer swaps a bucket directory for a symlink to a directory outside the root, over and over, while
`kvfs gc` deletes everything it can: nothing outside the root may ever be deleted (RootGuard walks with
O_NOFOLLOW directory descriptors, so a swap between the check and the unlink cannot redirect it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from faultlib import Store, env, kvfs_cli

pytestmark = pytest.mark.slow
BLOCKS = 1000

RACER = textwrap.dedent(
    """
    import os, sys, time
    bucket, outside, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
    swaps = 0
    while not os.path.exists(stop_file):
        try:
            os.rename(bucket, bucket + ".real")
            os.symlink(outside, bucket)
            os.unlink(bucket)
            os.rename(bucket + ".real", bucket)
            swaps += 1
        except OSError:
            pass
    print(swaps)
    """
)


def test_gc_never_deletes_through_a_swapped_in_symlink(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    outside = tmp_path / "outside"
    size = store.block(0xABC000).stat().st_size  # all in bucket "abc"
    for n in range(1, BLOCKS):
        store.block(0xABC000 + n)
    bucket = store.root / f"{store.namespace}_r0" / "abc"
    # The outside directory mirrors the bucket's layout, so every victim path resolves there during a swap.
    for sub in bucket.iterdir():
        (outside / sub.name).mkdir(parents=True, exist_ok=True)
        for f in sub.iterdir():
            (outside / sub.name / f.name).write_bytes(b"not yours")
    bait = sorted(outside.rglob("*.kvfs"))
    assert len(bait) == BLOCKS
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    rc, _out, err = kvfs_cli("--root", str(store.root), "--catalog", url, "scan", "--json")
    assert rc == 0, err
    stop_file = tmp_path / "stop"
    racer = subprocess.Popen(
        [sys.executable, "-c", RACER, str(bucket), str(outside), str(stop_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    deleted = contested = passes = 0
    keep = BLOCKS
    while racer.poll() is None and keep > 0:
        keep -= BLOCKS // 10  # each pass deletes a tenth, so every pass races the swaps
        _rc, out, _err = kvfs_cli(
            "--root", str(store.root), "--catalog", url, "gc", "--no-scan", "--max-bytes", str(keep * size), "--json"
        )  # fmt: skip
        passes += 1
        if out:
            deleted += out["deleted_files"]
            # Victims met mid-swap: their directory renamed away (missing) or a symlink on the path (refused).
            contested += out["missing"] + out["refused"]
    stop_file.touch()
    swaps = int(racer.communicate(timeout=30)[0])
    print(
        f"symlink race: {swaps} swaps, {passes} gc passes, {deleted} deleted, {contested} met mid-swap, "
        f"0 of {BLOCKS} outside files touched"
    )
    assert passes >= 3 and deleted + contested >= 100 and swaps > 50, (passes, deleted, contested, swaps)
    assert all(p.read_bytes() == b"not yours" for p in bait)
