"""Stopping a child service (the evictor a demo, benchmark or soak started) the way Kubernetes would."""

from __future__ import annotations

import signal
import subprocess


def stop_gracefully(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float) -> int:
    """SIGTERM, then up to `grace_s` for a clean exit, then SIGKILL; the exit status (negative: the signal)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
