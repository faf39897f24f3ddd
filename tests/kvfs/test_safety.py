"""RootGuard: refuses absolute, `..` and symlinked paths (targets survive), deletes only regular files in root."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from kvfs.safety import RootGuard, UnsafePath, check_relpath

BLOCK_DIR = "ns_0123456789ab_r0/abc/de_g0"


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("kvfs_unsafe_paths_refused_total", {"reason": reason}) or 0.0


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a root with one block dir and an outside dir holding precious files."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / BLOCK_DIR).mkdir(parents=True)
    (outside / "de_g0").mkdir(parents=True)
    for name in ("a.kvfs", "b.kvfs"):
        (root / BLOCK_DIR / name).write_bytes(b"block")
        (outside / "de_g0" / name).write_bytes(b"precious")
    (outside / "precious").write_bytes(b"precious")
    return root, outside


def test_deletes_regular_files_and_reports_missing(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    guard = RootGuard(root)
    assert guard.unlink(f"{BLOCK_DIR}/a.kvfs") is True
    assert not (root / BLOCK_DIR / "a.kvfs").exists()
    assert guard.unlink(f"{BLOCK_DIR}/a.kvfs") is False  # already gone
    stats = guard.unlink_many(
        [f"{BLOCK_DIR}/b.kvfs", f"{BLOCK_DIR}/a.kvfs", "ns_0123456789ab_r0/zzz/de_g0/x"]
    )
    assert (stats.deleted, stats.missing, stats.refused, stats.errors) == (1, 2, 0, 0)
    assert stats.not_deleted == []


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("../outside/precious", "dotdot"),
        (f"{BLOCK_DIR}/../../../../outside/precious", "dotdot"),
        ("ns_0123456789ab_r0//abc/de_g0/a.kvfs", "malformed"),
        (f"{BLOCK_DIR}/./a.kvfs", "malformed"),
        (f"{BLOCK_DIR}/", "malformed"),
        ("", "malformed"),
        (f"{BLOCK_DIR}/a\x00.kvfs", "malformed"),
        ("ns_0123456789ab_r0/abc", "not_regular_file"),
        (f"{BLOCK_DIR}/a.kvfs/x", "not_a_directory"),
    ],
)
def test_refusals_are_counted_and_touch_nothing(tree: tuple[Path, Path], relpath: str, reason: str) -> None:
    root, outside = tree
    before = refused(reason)
    stats = RootGuard(root).unlink_many([relpath])
    assert (stats.deleted, stats.refused, stats.not_deleted) == (0, 1, [relpath])
    assert refused(reason) == before + 1
    assert (outside / "precious").exists() and (root / BLOCK_DIR / "a.kvfs").exists()


def test_planted_symlinks_are_never_followed(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    ns = root / "ns_0123456789ab_r0"
    (ns / "lnk").symlink_to(outside)  # directory symlink inside the tree
    (root / BLOCK_DIR / "c.kvfs").symlink_to(outside / "precious")  # file symlink named like a block
    (root / "evil_0123456789ab").symlink_to(outside)  # a whole namespace that is a symlink
    (ns / "abs").symlink_to("/")
    before = refused("symlink")
    paths = [
        "ns_0123456789ab_r0/lnk/precious",
        "ns_0123456789ab_r0/lnk/de_g0/a.kvfs",
        f"{BLOCK_DIR}/c.kvfs",
        "evil_0123456789ab/de_g0/b.kvfs",
        "ns_0123456789ab_r0/abs/etc/hostname",
    ]
    stats = RootGuard(root).unlink_many(paths)
    assert (stats.deleted, stats.refused) == (0, len(paths))
    assert refused("symlink") == before + len(paths)
    for name in ("precious", "de_g0/a.kvfs", "de_g0/b.kvfs"):
        assert (outside / name).read_bytes() == b"precious"
    assert (root / BLOCK_DIR / "c.kvfs").is_symlink()  # not even the link is removed
    assert RootGuard(root).rmdir_empty_parents("ns_0123456789ab_r0/lnk/de_g0/a.kvfs") == 0
    assert (outside / "de_g0").is_dir()


def test_sorted_batch_many_files_per_leaf_and_files_in_parents(tmp_path: Path) -> None:
    """Unsorted input, several files per leaf, a file in a cached parent directory: all deleted, no fd leaks."""
    root = tmp_path / "root"
    rels = []
    for d in range(6):
        leaf = root / "ns_0123456789ab" / f"{d % 2:03x}" / f"{d:02x}_g0"
        leaf.mkdir(parents=True)
        for f in range(5):
            (leaf / f"{f:016x}.kvfs").write_bytes(b"")
            rels.append(f"ns_0123456789ab/{d % 2:03x}/{d:02x}_g0/{f:016x}.kvfs")
    (root / "ns_0123456789ab" / "000" / "stray.kvfs").write_bytes(b"")
    rels.append("ns_0123456789ab/000/stray.kvfs")
    rels.reverse()
    fds_before = len(os.listdir("/proc/self/fd"))
    stats = RootGuard(root).unlink_many(rels + ["ns_0123456789ab/000/01_g0/0000000000000000.kvfs"])
    assert (stats.deleted, stats.missing) == (len(rels), 1)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert not any(p.is_file() for p in root.rglob("*"))


def test_root_may_itself_be_a_symlink(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    (tmp_path / "mnt").symlink_to(root)
    assert RootGuard(tmp_path / "mnt").unlink(f"{BLOCK_DIR}/a.kvfs")
    assert not (root / BLOCK_DIR / "a.kvfs").exists()


def test_missing_root_counts_errors(tmp_path: Path) -> None:
    stats = RootGuard(tmp_path / "no-root").unlink_many(["a/b", "c/d"])
    assert (stats.errors, stats.not_deleted) == (2, ["a/b", "c/d"])


def test_big_batch_reuses_directory_fds(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rels = []
    for d in range(30):
        directory = root / "ns_0123456789ab" / f"{d:03x}" / f"{d % 256:02x}_g0"
        directory.mkdir(parents=True)
        for f in range(40):
            (directory / f"{f:016x}.kvfs").write_bytes(b"")
            rels.append(f"ns_0123456789ab/{d:03x}/{d % 256:02x}_g0/{f:016x}.kvfs")
    fds_before = len(os.listdir("/proc/self/fd"))
    stats = RootGuard(root).unlink_many(rels)
    assert stats.deleted == len(rels)
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every directory fd closed again
    assert not any(p.is_file() for p in root.rglob("*"))


def test_rmdir_empty_parents(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    guard = RootGuard(root)
    rel = f"{BLOCK_DIR}/a.kvfs"
    guard.unlink(rel)
    assert guard.rmdir_empty_parents(rel) == 0  # b.kvfs still there
    guard.unlink(f"{BLOCK_DIR}/b.kvfs")
    assert guard.rmdir_empty_parents(rel) == 2  # de_g0 and abc; the namespace directory stays
    assert (root / "ns_0123456789ab_r0").is_dir() and not (root / "ns_0123456789ab_r0" / "abc").exists()
    assert guard.rmdir_empty_parents("../x/y/z") == 0


def test_rename_race_cannot_redirect_deletion(tree: tuple[Path, Path]) -> None:
    """A thread keeps swapping a block directory for a symlink to the outside while batches delete."""
    root, outside = tree
    victim_dir = root / "ns_0123456789ab_r0" / "abc"
    parked = root / "ns_0123456789ab_r0" / "abc.parked"
    names = [f"{i:016x}.kvfs" for i in range(200)]
    for name in names:
        (root / BLOCK_DIR / name).write_bytes(b"block")
        (outside / "de_g0" / name).write_bytes(b"precious")
    stop = threading.Event()
    swaps = 0

    def attacker() -> None:
        nonlocal swaps
        while not stop.is_set():
            try:
                os.rename(victim_dir, parked)
                os.symlink(outside, victim_dir)
                time.sleep(0)
                os.unlink(victim_dir)
                os.rename(parked, victim_dir)
                swaps += 1
            except OSError:
                pass

    thread = threading.Thread(target=attacker)
    thread.start()
    guard = RootGuard(root)
    try:
        deadline = time.monotonic() + 3
        remaining = [f"{BLOCK_DIR}/{n}" for n in names]
        while remaining and time.monotonic() < deadline:
            guard.unlink_many(remaining[:50])
            for rel in remaining[:5]:
                guard.unlink(rel)
            remaining = [
                r
                for r in remaining
                if os.path.lexists(parked / r.split("/", 2)[2]) or os.path.lexists(root / r)
            ]
    finally:
        stop.set()
        thread.join()
    if not victim_dir.exists() and parked.exists():
        parked.rename(victim_dir)
    assert swaps > 0
    assert len(remaining) < len(names)  # the guard made progress during the race
    for name in names:
        assert (outside / "de_g0" / name).read_bytes() == b"precious"
    assert (outside / "precious").exists()


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b/c", "/", "x\x00"]), min_size=1, max_size=6))
@settings(max_examples=200)
def test_check_relpath_never_accepts_escapes(parts: list[str]) -> None:
    relpath = "/".join(parts)
    try:
        components = check_relpath(relpath)
    except UnsafePath as exc:
        assert exc.reason in {"absolute", "dotdot", "malformed"}
        return
    assert ".." not in components and "." not in components and "" not in components
    assert not relpath.startswith("/") and "\x00" not in relpath


def test_threaded_batch_reports_each_outcome(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    rels = []
    for d in range(20):
        directory = root / "ns_0123456789ab_r0" / f"{d:03x}" / f"{d:02x}_g0"
        directory.mkdir(parents=True)
        for f in range(20):
            (directory / f"{f:016x}.kvfs").write_bytes(b"")
            rels.append(f"ns_0123456789ab_r0/{d:03x}/{d:02x}_g0/{f:016x}.kvfs")
    (root / "ns_0123456789ab_r0" / "lnk").symlink_to(outside)
    gone = ["ns_0123456789ab_r0/fff/ff_g0/0000000000000000.kvfs"]
    bad = ["../outside/precious", "ns_0123456789ab_r0/lnk/de_g0/a.kvfs"]
    stats = RootGuard(root).unlink_many(rels + gone + bad, workers=4)
    assert (stats.deleted, stats.missing, stats.refused, stats.errors) == (len(rels), 1, 2, 0)
    assert stats.missing_paths == gone and sorted(stats.not_deleted) == sorted(bad)
    assert (outside / "precious").exists() and (outside / "de_g0" / "a.kvfs").exists()


def test_component_walk_when_openat2_is_unavailable(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 5.6 (or seccomp) have no openat2: the per-component O_NOFOLLOW walk must hold alone."""
    import kvfs.safety as safety

    monkeypatch.setattr(safety, "_openat2_state", {"fn": None})
    root, outside = tree
    (root / "ns_0123456789ab_r0" / "lnk").symlink_to(outside)
    stats = RootGuard(root).unlink_many(
        [f"{BLOCK_DIR}/a.kvfs", "ns_0123456789ab_r0/lnk/de_g0/a.kvfs", "ns_0123456789ab_r0/nope/x/y.kvfs"]
    )
    assert (stats.deleted, stats.refused, stats.missing) == (1, 1, 1)
    assert (outside / "de_g0" / "a.kvfs").exists() and not (root / BLOCK_DIR / "a.kvfs").exists()


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "component-walk"])
def test_lstat_many_answers_regular_files_beneath_the_root_only(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, openat2: bool
) -> None:
    """What ingest sizes STORE claims by: a stat for each regular file beneath the root, None for anything else
    (missing file or directory, a symlink as file or directory, an escape), in order, never raising."""
    import kvfs.safety as safety

    if not openat2:
        monkeypatch.setattr(safety, "_openat2_state", {"fn": None})
    root, outside = tree
    (root / "ns_0123456789ab_r0" / "lnk").symlink_to(outside)
    (root / BLOCK_DIR / "link.kvfs").symlink_to(outside / "precious")
    (root / BLOCK_DIR / "sub.kvfs").mkdir()
    paths = [
        f"{BLOCK_DIR}/a.kvfs",
        f"{BLOCK_DIR}/gone.kvfs",
        "ns_0123456789ab_r0/nope/x/y.kvfs",
        "ns_0123456789ab_r0/nope/x/z.kvfs",  # a second path under the same missing directory
        "ns_0123456789ab_r0/lnk/de_g0/a.kvfs",
        f"{BLOCK_DIR}/link.kvfs",
        f"{BLOCK_DIR}/sub.kvfs",
        f"{BLOCK_DIR}/../../../../outside/precious",
        "/etc/passwd",
        f"{BLOCK_DIR}/b.kvfs",
    ]
    got = RootGuard(root).lstat_many(paths)
    assert [st is not None for st in got] == [True] + [False] * 8 + [True]
    assert got[0] is not None and got[0].st_size == len(b"block")
