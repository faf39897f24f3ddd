"""Evictor test helpers: real `kvfs-evictor` processes, real writer processes, HTTP probes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WRITER = HERE / "writer.py"

# Small intervals so a test sees several passes per second; min_age defaults to 0 unless a test sets it.
FAST = [
    "--enforce-interval",
    "0.3",
    "--journal-interval",
    "0.2",
    "--leader-retry",
    "0.3",
    "--min-age",
    "0",
    "--metrics-host",
    "127.0.0.1",
    "--metrics-port",
    "0",
    # The tests assert exact LRU order; the default policy has its own test (test_default_policy_converges).
    "--policy",
    "lru",
]


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVFS_")}
    env["PYTHONPATH"] = str(REPO)
    return env


class Evictor:
    """One `python -m evictor` process; its log goes to a file the test can read."""

    def __init__(self, log_path: Path, args: list[str]) -> None:
        self.log_path = log_path
        self.args = args
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evictor", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
        )
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = 20.0) -> Evictor:
        def port() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"evictor exited with {self.proc.returncode}:\n{self.log()}")
            match = re.search(r"http :(\d+)", self.log())
            return int(match[1]) if match else None

        self.port = wait_for(port, timeout, what="the evictor's HTTP port")
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=15) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        return json.loads(body)

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample from /metrics (`labels` like 'source="scan"'); 0 when absent."""
        _, body = self.get("/metrics")
        want = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"evictor exited with {self.proc.returncode}:\n{self.log()}")
            return re.search(pattern, self.log())

        return wait_for(found, timeout, what=f"log line {pattern!r}")

    def wait_leader(self, timeout: float = 30.0) -> None:
        wait_for(lambda: self.status()["leader"], timeout, what="leadership")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_writer(root: Path, model: str, times: list[float], **spec: Any) -> list[dict[str, Any]]:
    """Run a writer process to completion; returns [{relpath, size}] per block."""
    spec = {"root": str(root), "model": model, "times": times, **spec}
    out = subprocess.run(
        [sys.executable, str(WRITER), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def files_on_disk(root: Path) -> set[str]:
    """Relative paths of every block file under root."""
    out = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith((".kvfs", ".bin")):
                out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def bytes_on_disk(root: Path) -> int:
    """Bytes of the block files under root, read while a running evictor may delete them: a file listed and then
    gone before its stat counts as deleted, not as an error."""
    total = 0
    for rel in files_on_disk(root):
        try:
            total += (root / rel).stat().st_size
        except FileNotFoundError:
            continue
    return total


def one_namespace(root: Path) -> tuple[str, bytes]:
    """A fresh root holding one namespace (model `org/m`, its config written): its name and fingerprint."""
    from kvfs.layout import fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config

    root.mkdir()
    fields = kvfs_fields({"model_name": "org/m", "block_size": 16, "dtype": "bfloat16"})
    write_namespace_config(root, fields)
    return namespace_name(fields), fingerprint_sha256(fields)
