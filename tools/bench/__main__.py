"""Run every benchmark module of `tools.bench` in turn: `python -m tools.bench [--only NAME ...] [--list]`.

Each module runs in its own interpreter (`python -m tools.bench.<name>`) so one's memory or threads never
skew the next; the exit status is non-zero when any of them failed.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import time

import tools.bench

# Cheap ones first; anything not listed runs afterwards in name order.
PREFERRED_ORDER = ["checksum", "journal", "catalog", "scan", "du"]
# Minutes long and about the evictor's start-up on a 100k-directory tree: run only when named with --only.
ON_REQUEST = {"evictor_start"}


def discover() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(tools.bench.__path__) if not m.name.startswith("_")]
    ranked = [n for n in PREFERRED_ORDER if n in names]
    return ranked + sorted(n for n in names if n not in PREFERRED_ORDER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run only this module (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    args = parser.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"no benchmark module named {', '.join(unknown)} (have: {', '.join(names)})")
    selected = [n for n in names if n in args.only or (not args.only and n not in ON_REQUEST)]
    failed: list[str] = []
    for name in selected:
        print(f"\n=== tools.bench.{name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"tools.bench.{name}"])
        print(f"=== tools.bench.{name}: rc={rc} in {time.perf_counter() - t0:.1f}s ===", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
