"""The soak: writers, verifying readers and an evictor on one root, with writers and the evictor SIGKILLed.

    python tests/faults/soak.py run --duration 600 [--json]     # `make soak`
    python tests/faults/soak.py run --duration 20               # what tests/faults/test_fault_soak.py runs

* Writers (processes) store kvfs block files whose payload is a function of the block's hash, journal every
  store and re-access, and are SIGKILLed at random instants (every 1-4 s) and restarted under a new writer id:
  a killed writer must never leave a visible partial block, only `*.tmp` orphans the evictor reclaims.
* Readers (processes) load random blocks found in the tree with `load_block` and compare the payload with the
  one its hash implies: a hit with other bytes is a *wrong payload* (must be 0); a miss is fine (evicted or
  being replaced).  They journal their reads, so recency moves.
* The evictor runs on an SQLite catalog (on local disk) with `--max-bytes CAP`, and is SIGKILLed every
  `--evictor-kill-every` seconds and restarted (catalog = disk: nothing may be lost or double-deleted).
* Bait outside the root: a symlinked namespace directory and a symlinked block file inside the root point to
  files outside it.  Deleting any of them is a *deletion outside the root* (must be 0).
* A monitor samples the bytes of block files every 0.5 s: the report gives the time spent over the cap
  (fraction of samples, longest stretch) and the peak.  After the writers stop, the evictor must bring usage
  under the cap, and `verify_tree` must find no corrupt file.

Prints one JSON object (`--json`) or a table; exit status 1 when an invariant broke.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kvfs.blockfile import BlockIdentity, StoreOutcome, load_block, store_block  # noqa: E402
from kvfs.journal import JournalWriter  # noqa: E402
from kvfs.layout import (  # noqa: E402
    BlockKey,
    fingerprint_sha256,
    kvfs_fields,
    namespace_name,
    parse_block_relpath,
    write_namespace_config,
)
from kvfs.procs import stop_gracefully  # noqa: E402

PAYLOAD = 60 * 1024  # + 4 KiB header: 64 KiB files
FIELDS = kvfs_fields({"model_name": "soak/model", "hash_block_size": 16})
NAMESPACE = namespace_name(FIELDS)
FINGERPRINT = fingerprint_sha256(FIELDS)


def key_of(index: int) -> BlockKey:
    block_hash = random.Random(index).randbytes(16).hex()
    return BlockKey(NAMESPACE, 0, 0, block_hash, "kvfs")


def payload_of(block_hash: str) -> bytes:
    return random.Random(block_hash).randbytes(PAYLOAD)


def ident_of(key: BlockKey) -> BlockIdentity:
    return BlockIdentity(FINGERPRINT, bytes.fromhex(key.block_hash))


# --- worker processes -------------------------------------------------------------------------------------------


def writer(root: Path, seed: int, universe: int) -> None:
    """Store and re-access blocks forever (until killed): a hot set re-read often, a long tail stored once."""
    rng = random.Random(seed)
    write_namespace_config(root, FIELDS)
    journal = JournalWriter(root, writer_id=f"soak-w{seed}-{os.getpid()}", flush_interval=0.2)
    while True:
        index = rng.randrange(64) if rng.random() < 0.5 else rng.randrange(universe)
        key = key_of(index)
        path = root / key.relpath()
        if path.exists():
            journal.record_access(key)
        else:
            result = store_block(path, payload_of(key.block_hash), ident_of(key))
            if result.outcome is StoreOutcome.STORED:
                journal.record_store(key, path.stat().st_size)
        time.sleep(rng.uniform(0, 0.02))  # ~100 operations/s per writer


def reader(root: Path, seed: int, out: Path) -> None:
    """Load random blocks of the tree; write counts to `out` every second."""
    rng = random.Random(seed)
    journal = JournalWriter(root, writer_id=f"soak-r{seed}-{os.getpid()}", flush_interval=0.2)
    counts = {"loads": 0, "hits": 0, "misses": 0, "wrong": 0}
    ns_dir = root / f"{NAMESPACE}_r0"
    last = 0.0
    while True:
        try:
            buckets = [b for b in os.scandir(ns_dir) if b.is_dir(follow_symlinks=False)]
            bucket = rng.choice(buckets)
            subs = [s for s in os.scandir(bucket.path) if s.is_dir(follow_symlinks=False)]
            sub = rng.choice(subs)
            names = [e.name for e in os.scandir(sub.path) if e.name.endswith(".kvfs")]
            rel = f"{NAMESPACE}_r0/{bucket.name}/{sub.name}/{rng.choice(names)}"
        except (OSError, IndexError):
            time.sleep(0.01)
            continue
        key = parse_block_relpath(rel)
        if key is None:
            continue
        result = load_block(root / rel, ident_of(key))
        counts["loads"] += 1
        if result.ok:
            counts["hits"] += 1
            if result.payload != payload_of(key.block_hash):
                counts["wrong"] += 1
            journal.record_access(key)
        else:
            counts["misses"] += 1
        # ~200 loads/s: reading every block several times a second would make every victim "used since it
        # was chosen" and the recheck would rightly spare them all.
        time.sleep(0.005)
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, out)


# --- orchestration ----------------------------------------------------------------------------------------------


def _spawn(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVFS_")}
    env["PYTHONPATH"] = str(REPO)
    sink = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, *args], stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _block_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith(".kvfs"):
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def _bait(root: Path, outside: Path) -> list[Path]:
    """Files outside the root reachable through symlinks inside it; returns the outside files."""
    evil_ns = outside / "ns"
    bucket = evil_ns / "abc" / "de_g0"
    bucket.mkdir(parents=True)
    files = []
    for n in range(8):
        path = bucket / f"abcde{n:027x}.kvfs"
        path.write_bytes(b"bait" * 1000)
        files.append(path)
    os.symlink(evil_ns, root / f"evil_{'0' * 12}_r0")
    lone = outside / "lone.kvfs"
    lone.write_bytes(b"bait")
    files.append(lone)
    own = root / f"{NAMESPACE}_r0" / "fff" / "ff_g0"
    own.mkdir(parents=True, exist_ok=True)
    os.symlink(lone, own / f"fff{'f' * 29}.kvfs")
    return files


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kvfs-soak-", dir=args.dir))
    root, outside = work / "root", work / "outside"
    root.mkdir()
    outside.mkdir()
    write_namespace_config(root, FIELDS)
    bait = _bait(root, outside)
    cap = args.cap_blocks * (PAYLOAD + 4096)
    catalog = f"sqlite:///{work / 'catalog.db'}"
    evictor_args = [
        "-m", "evictor", "--root", str(root), "--catalog", catalog, "--max-bytes", str(cap),
        "--high-watermark", "90", "--low-watermark", "70", "--enforce-interval", "0.5",
        "--journal-interval", "0.3", "--min-age", "0", "--orphan-grace", "5s",
        "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--log-level", "info",
    ]  # fmt: skip
    rng = random.Random(args.seed)
    evictor = _spawn(*evictor_args, log=work / "evictor.log")
    writers = [_spawn(__file__, "writer", str(root), str(rng.randrange(1 << 30)), str(args.universe))
               for _ in range(args.writers)]  # fmt: skip
    reader_out = [work / f"reader-{i}.json" for i in range(args.readers)]
    readers = [_spawn(__file__, "reader", str(root), str(i), str(out)) for i, out in enumerate(reader_out)]
    samples: list[tuple[float, int]] = []
    writer_kills = evictor_kills = 0
    start = time.monotonic()
    next_writer_kill = start + rng.uniform(1, 4)
    next_evictor_kill = start + args.evictor_kill_every
    while (now := time.monotonic()) - start < args.duration:
        samples.append((now - start, _block_bytes(root)))
        if now >= next_writer_kill:
            i = rng.randrange(len(writers))
            writers[i].send_signal(signal.SIGKILL)
            writers[i].wait()
            writer_kills += 1
            writers[i] = _spawn(
                __file__, "writer", str(root), str(rng.randrange(1 << 30)), str(args.universe)
            )
            next_writer_kill = now + rng.uniform(1, 4)
        if now >= next_evictor_kill:
            evictor.send_signal(signal.SIGKILL)
            evictor.wait()
            evictor_kills += 1
            evictor = _spawn(*evictor_args, log=work / "evictor.log")
            next_evictor_kill = now + args.evictor_kill_every
        time.sleep(0.5)
    for proc in writers:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Usage must come back under the cap once the writers stop (readers go on reading).
    settle_start = time.monotonic()
    settled = None
    while time.monotonic() - settle_start < 60:
        if _block_bytes(root) <= cap:
            settled = time.monotonic() - settle_start
            break
        time.sleep(0.25)
    for proc in readers:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stop_gracefully(evictor, 20)

    from kvfs.verify import verify_tree

    verified = verify_tree(root, threads=2)
    counts = {"loads": 0, "hits": 0, "misses": 0, "wrong": 0}
    for out in reader_out:
        if out.exists():
            for k, v in json.loads(out.read_text()).items():
                counts[k] += v
    over = [t for t, b in samples if b > cap]
    longest = cur = 0.0
    prev_t = None
    for t, b in samples:
        if b > cap:
            cur += 0.0 if prev_t is None else t - prev_t
            longest = max(longest, cur)
        else:
            cur = 0.0
        prev_t = t
    result = {
        "duration_s": round(time.monotonic() - start, 1),
        "writers": args.writers,
        "readers": args.readers,
        "cap_bytes": cap,
        "writer_kills": writer_kills,
        "evictor_kills": evictor_kills,
        "loads": counts["loads"],
        "verified_hits": counts["hits"],
        "misses": counts["misses"],
        "wrong_payloads": counts["wrong"],
        "deletions_outside_root": sum(1 for p in bait if not p.exists()),
        "corrupt_after": len(verified.corrupt),
        "files_checked_after": verified.checked,
        "samples": len(samples),
        "over_cap_fraction": round(len(over) / max(1, len(samples)), 4),
        "longest_over_cap_s": round(longest, 1),
        "peak_usage_ratio": round(max((b for _, b in samples), default=0) / cap, 3),
        "median_usage_ratio": round(statistics.median(b for _, b in samples) / cap, 3) if samples else 0.0,
        "settle_under_cap_s": None if settled is None else round(settled, 1),
        "work_dir": str(work),
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def broken(result: dict[str, Any]) -> list[str]:
    """The invariants the soak checks; empty when all hold."""
    out = []
    if result["wrong_payloads"]:
        out.append(f"{result['wrong_payloads']} wrong payloads")
    if result["deletions_outside_root"]:
        out.append(f"{result['deletions_outside_root']} deletions outside the root")
    if result["corrupt_after"]:
        out.append(f"{result['corrupt_after']} corrupt files visible")
    if result["settle_under_cap_s"] is None:
        out.append("usage did not come back under the cap within 60 s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer")
    w.add_argument("root", type=Path)
    w.add_argument("seed", type=int)
    w.add_argument("universe", type=int)
    r = sub.add_parser("reader")
    r.add_argument("root", type=Path)
    r.add_argument("seed", type=int)
    r.add_argument("out", type=Path)
    s = sub.add_parser("run")
    s.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    s.add_argument("--writers", type=int, default=3)
    s.add_argument("--readers", type=int, default=2)
    s.add_argument("--cap-blocks", type=int, default=300, help="the evictor's cap, in 64 KiB blocks")
    s.add_argument("--universe", type=int, default=3000, help="distinct blocks the writers draw from")
    s.add_argument("--evictor-kill-every", type=float, default=60.0, help="seconds between evictor SIGKILLs")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--dir", default=None, help="where the work directory goes (default: the temp dir)")
    s.add_argument("--keep", action="store_true", help="keep the work directory")
    s.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "writer":
        writer(args.root, args.seed, args.universe)
        return 0
    if args.cmd == "reader":
        reader(args.root, args.seed, args.out)
        return 0
    result = run(args)
    problems = broken(result)
    if args.json:
        print(json.dumps({**result, "broken": problems}, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
        print("invariants:", "all hold" if not problems else "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
