"""Issue 13, failure 6: a hung leader blocked eviction for the whole fleet.

The leader held a session advisory lock with no liveness deadline; stopped (SIGSTOP) for 20 s, it kept the lock
(the kernel keeps a stopped process's TCP session alive), no follower took over and usage reached 273% of the
cap.  Now leadership is a lease that only the enforcement loop renews."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from evictor_helpers import bytes_on_disk, run_writer, wait_for

pytestmark = pytest.mark.slow

FILE = 64 * 1024
PAYLOAD = FILE - 4096
LEASE = 3.0


def test_stopped_leader_is_replaced_within_two_lease_periods(
    tmp_path: Path, pg_url: str, start_evictor
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    cap = 20 * FILE
    args = ("--max-bytes", str(cap), "--leader-lease", f"{LEASE}s")
    a = start_evictor(root, pg_url, *args, name="a")
    a.wait_leader()
    b = start_evictor(root, pg_url, *args, name="b")
    wait_for(lambda: b.get("/readyz")[0] == 200, what="the follower to be ready")
    time.sleep(1.0)
    assert not b.status()["leader"]

    a.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    b.wait_leader(timeout=4 * LEASE)
    takeover = time.monotonic() - t0
    print(f"stopped-leader takeover: {takeover:.2f}s (lease {LEASE}s)")
    assert takeover < 2 * LEASE, f"takeover took {takeover:.1f}s (bound: 2 lease periods of {LEASE}s)"

    # The new leader enforces while the old one is still stopped.
    now = time.time()
    run_writer(root, "org/model-hang", [now - 1000 + i for i in range(40)], payload=PAYLOAD)
    wait_for(lambda: bytes_on_disk(root) <= cap, timeout=30, what="the new leader to evict below the cap")

    # The old leader wakes up: it must find its lease gone and not lead (never two leaders).
    a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: not a.status()["leader"], timeout=3 * LEASE, what="the old leader to step down")
    for _ in range(5):
        assert b.status()["leader"] and not a.status()["leader"]
        time.sleep(0.5)
