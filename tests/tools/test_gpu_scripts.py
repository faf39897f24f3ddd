"""tools/gpu/datapath_tables.sh runs only on the GPU machine: here every step runs against a stand-in `python3`
that records its arguments, and each recorded command must parse with the tool's own options, so a renamed
option cannot rot the script between GPU sessions."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from tools.e2e import main as e2e
from tools.e2e import tiered

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu" / "datapath_tables.sh"


def _run(tmp_path: Path, *steps: str) -> tuple[int, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    for name in ("python3", "nvidia-smi"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> "{log}"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(SCRIPT), *steps], cwd=ROOT, env=env, capture_output=True, text=True)
    calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, [c[1:] for c in calls if c[0] == "python3" and c[1] == "-m"]


def test_every_step_runs_commands_that_parse_with_the_tools_options(tmp_path):
    rc, calls = _run(tmp_path, "tier", "shm", "shm128", "disk", "disk128", "tiered", "tiered_rounds")
    assert rc == 0
    modules = [c[1] for c in calls]
    assert modules == [
        "tools.datapath.gpu_check",
        "tools.datapath.ladder",
        "tools.datapath.tier_bench",
        "tools.e2e",
        "tools.e2e",
        "tools.e2e",
        "tools.e2e",
        "tools.e2e.tiered",
        "tools.e2e.tiered",
    ]
    for call in calls:
        module, argv = call[1], call[2:]
        if module == "tools.e2e":
            args = e2e.parse_args(argv)
            assert args.json_out.endswith(".json") and args.markdown.endswith(".md")
        elif module == "tools.e2e.tiered":
            args = tiered.parse_args(argv)
            # the full table, or the local hits in rounds (each against its own round's CPU tier alone)
            assert args.modes == ["cpu", "kvfs", "fs"] or (args.modes[0] == "cpu" and args.rounds > 1)
        else:  # the CPU-side tools need vLLM 0.33 or a GPU to import: their option names are checked in source
            source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
            for opt in (a for a in argv if a.startswith("--")):
                assert f'"{opt}"' in source, (module, opt)
    disk = next(e2e.parse_args(c[2:]) for c in calls if "--cold-reader" in c)
    assert disk.roots == ["disk"] and disk.no_cpu_tier


def test_an_unknown_step_fails_before_running_anything_after_it(tmp_path):
    rc, calls = _run(tmp_path, "bogus", "tier")
    assert rc == 2 and calls == []
