"""Helpers of the fault suite: a small real store, processes run as an unprivileged user when we are root."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


class Store:
    """A root with one namespace (`org/model`) and helpers to write real, sound block files into it."""

    def __init__(self, root: Path, model: str = "org/model") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        fields = kvfs_fields({"model_name": model, "block_size": 16})
        write_namespace_config(root, fields)
        self.namespace = namespace_name(fields)
        self.fingerprint = fingerprint_sha256(fields)

    def key(self, n: int, group: int = 0) -> BlockKey:
        return BlockKey(self.namespace, 0, group, f"{n:03x}{n:029x}", "kvfs")

    def block(self, n: int, size: int = 3000, payload: bytes | None = None) -> Path:
        key = self.key(n)
        path = self.root / key.relpath()
        ident = BlockIdentity(self.fingerprint, b"key-%d" % n)
        result = store_block(path, payload if payload is not None else os.urandom(size), ident)
        assert result.outcome is StoreOutcome.STORED
        return path


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KVFS_")}
    out["PYTHONPATH"] = str(REPO)
    out["HOME"] = out.get("HOME", "/tmp")
    return out


def as_unprivileged(argv: list[str]) -> list[str]:
    """`argv` run as an ordinary user: root reads any file whatever its mode, so EACCES needs someone else."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def chown_tree(path: Path, uid: int = NOBODY) -> None:
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(path, uid, uid)


# What the unprivileged child imports: kvfs's CLI (every command) and the evictor's.
_CHILD_IMPORTS = "import kvfs.cli.app, kvfs.cli.gc, kvfs.cli.verify, kvfs.cli.scan, kvfs.cli.du, evictor.cli"


def _child_runs(python: str, pythonpath: str) -> bool:
    argv = as_unprivileged([python, "-c", _CHILD_IMPORTS])
    environ = {**env(), "PYTHONPATH": pythonpath}
    try:
        proc = subprocess.run(argv, capture_output=True, env=environ, cwd="/", timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@functools.cache
def unprivileged_python() -> tuple[str, str]:
    """(interpreter, PYTHONPATH) with which the unprivileged user runs kvfs.

    The checkout (and the virtual environment in it) may sit under a directory only root can enter (cloned as
    root into a 0700 directory): the child then gets a world-readable copy of kvfs, evictor and the third-party
    modules they import, and the first interpreter it can execute (the venv's, or the one it was made from).
    Skips, saying why, when it can execute none."""
    if os.geteuid() != 0 or _child_runs(sys.executable, str(REPO)):
        return sys.executable, str(REPO)
    listing = subprocess.run(
        [sys.executable, "-c", f"{_CHILD_IMPORTS}; import sys, json; print(json.dumps("
         "{n: getattr(m, '__file__', None) or '' for n, m in sys.modules.items() if '.' not in n}))"],
        capture_output=True, text=True, check=True, timeout=120,
        env={**env(), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},  # this process's view
    )  # fmt: skip
    site_dirs = {p for p in sys.path if p.endswith("-packages")}
    copy = Path(tempfile.mkdtemp(prefix="kvfs-unprivileged-"))
    atexit.register(shutil.rmtree, copy, True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("kvfs", "evictor"):
        shutil.copytree(REPO / package, copy / "src" / package, ignore=skip)
    for name, file in json.loads(listing.stdout).items():
        where = Path(file)
        if name.startswith("_") or not any(str(where).startswith(d + os.sep) for d in site_dirs):
            continue  # the standard library (reachable with its interpreter), editable-install hooks
        source = where.parent if where.name == "__init__.py" else where
        target = copy / "site" / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
        else:
            (copy / "site").mkdir(exist_ok=True)
            shutil.copy2(source, target)
    for dirpath, _dirnames, filenames in os.walk(copy):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    pythonpath = f"{copy / 'src'}:{copy / 'site'}"
    for python in (sys.executable, os.path.realpath(sys.executable)):
        if _child_runs(python, pythonpath):
            return python, pythonpath
    pytest.skip(f"the unprivileged user (uid {NOBODY}) can execute no Python interpreter: {sys.executable}")


def kvfs_cli(*args: str, unprivileged: bool = False, timeout: float = 120) -> tuple[int, Any, str]:
    """Run `python -m kvfs.cli ARGS` in a real process; (rc, parsed JSON stdout or None, stderr)."""
    python, pythonpath = unprivileged_python() if unprivileged else (sys.executable, str(REPO))
    argv = [python, "-m", "kvfs.cli", *args]
    if unprivileged:
        argv = as_unprivileged(argv)
    environ = {**env(), "PYTHONPATH": pythonpath}
    proc = subprocess.run(argv, capture_output=True, text=True, env=environ, cwd="/", timeout=timeout)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    return proc.returncode, out, proc.stderr


def write_segment(root: Path, writer: str, data: bytes) -> Path:
    """A journal segment of `writer` holding `data` (records as `segment_bytes` frames them, or any bytes)."""
    from kvfs.journal import segment_name
    from kvfs.layout import journal_dir

    directory = journal_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / segment_name(writer, 0)
    path.write_bytes(data)
    return path


def segment_bytes(*records: Any) -> bytes:
    """`records` encoded as a writer does, then the end-of-segment record."""
    from kvfs.journal import END_RECORD, encode_record

    return b"".join(encode_record(r) for r in records) + END_RECORD


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when it has no such series yet)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0
