"""Helpers of the fault suite: a small real store, processes run as an unprivileged user when we are root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def kvfs_cli(*args: str, unprivileged: bool = False, timeout: float = 120) -> tuple[int, Any, str]:
    """Run `python -m kvfs.cli ARGS` in a real process; (rc, parsed JSON stdout or None, stderr)."""
    argv = [sys.executable, "-m", "kvfs.cli", *args]
    if unprivileged:
        argv = as_unprivileged(argv)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd="/", timeout=timeout)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    return proc.returncode, out, proc.stderr
