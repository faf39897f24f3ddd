"""A writer SIGKILLed at random instants never leaves a visible partial block: only `.tmp` files may remain."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kvfs.blockfile import BlockIdentity, load_block
from kvfs.layout import is_temp_name

FP = bytes(range(32))

WRITER = textwrap.dedent(
    """
    import os, sys
    from kvfs.blockfile import BlockIdentity, aligned_buffer, store_block
    root, start = sys.argv[1], int(sys.argv[2])
    rng_sizes = [1 << 20, 3 << 20, (4 << 20) + 4095, 8 << 20]
    # Buffers made once, so the writer spends its time in store_block, where the kills must land.
    bufs = [aligned_buffer(size) for size in rng_sizes]
    i = start
    while True:
        size = rng_sizes[i % len(rng_sizes)]
        buf = bufs[i % len(rng_sizes)]
        buf[:1] = bytes([i % 251])
        path = os.path.join(root, f"{i % 7:03x}", f"{i:016x}.kvfs")
        result = store_block(path, memoryview(buf)[:size], BlockIdentity(bytes(range(32)), i.to_bytes(8, "big")),
                             direct=bool(i % 2))
        assert result.outcome == "stored", result
        if i == start:
            print("ready", flush=True)
        i += 1
    """
)


def test_sigkilled_writer_leaves_no_partial_block(tmp_path: Path) -> None:
    rng = random.Random(1234)
    temps_seen = 0
    finals_checked = 0
    start = 0
    # At least 6 kills, and more (up to 40) until one has caught a writer mid-store: a store is a few system
    # calls, so several kills in a row can land between two stores.
    rounds = 0
    while rounds < 6 or (temps_seen == 0 and rounds < 40):
        rounds += 1
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        for dirpath, _dirs, files in os.walk(tmp_path):
            for name in files:
                path = Path(dirpath) / name
                if is_temp_name(name):
                    temps_seen += 1
                    path.unlink()  # count each orphan once
                    continue
                assert name.endswith(".kvfs"), name
                index = int(name.split(".")[0], 16)
                result = load_block(path, BlockIdentity(FP, index.to_bytes(8, "big")))
                assert result.ok, (name, result.reason)
                assert result.payload is not None and result.payload[:1] == bytes([index % 251])
                finals_checked += 1
                start = max(start, index + 1)
        start += 1000  # never reuse a name the killed writer may have been publishing
    assert finals_checked >= 6
    # With multi-MiB writes most kills land mid-write; at least one round must have caught a writer in the act.
    assert temps_seen >= 1
