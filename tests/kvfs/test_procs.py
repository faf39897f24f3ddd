"""stop_gracefully: SIGTERM first, SIGKILL only after the grace period, never a hang."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from kvfs.procs import stop_gracefully


def _child(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # its handler is installed
    return proc


def test_a_service_that_honours_sigterm_exits_cleanly():
    proc = _child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    assert stop_gracefully(proc, 10) == 0


def test_one_that_ignores_it_is_killed_after_the_grace_period():
    proc = _child(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    started = time.monotonic()
    assert stop_gracefully(proc, 0.5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - started < 10


def test_one_already_gone_is_not_signalled():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert stop_gracefully(proc, 1) == 3
