"""`kvfs-evictor` / `python -m evictor`: the service (same flags as `kvfs evictor run`)."""

from __future__ import annotations

from evictor.cli import run_cmd


def main() -> None:
    run_cmd(prog_name="kvfs-evictor")


if __name__ == "__main__":
    main()
