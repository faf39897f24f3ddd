"""The README's `kvfs replay` example runs as written, on files it makes itself (nothing outside the repository)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def replay_example() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "kvfs replay" in b]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_replay_example_reads_only_what_it_writes(tmp_path: Path) -> None:
    commands = replay_example()
    written: set[str] = set()
    for argv in commands:
        assert not any(".." in Path(a).parts for a in argv), argv  # nothing outside the repository
        if argv[:2] == ["kvfs", "replay"]:
            assert argv[2] in written, f"{argv[2]} is read before any line of the example writes it"
        if "-o" in argv:
            written.add(argv[argv.index("-o") + 1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in commands:  # as from the repository root: `python -m tools...` and the `kvfs` console script
        cmd = (
            [sys.executable, "-m", "kvfs.cli", *argv[1:]]
            if argv[0] == "kvfs"
            else [sys.executable, *argv[1:]]
        )
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, (argv, out.stderr)
