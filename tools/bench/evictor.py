"""Evictor benchmarks, each printed next to a baseline measured in the same run.

    python -m tools.bench.evictor [--blocks 1000000] [--victims 100000] [--files 20000] [--records 200000]
                            [--tree-files 20000] [--runs 3] [--only plan,delete,ingest,rss,metaops]
                            [--plan-policies prefix,lru,adaptive:shares,...]

* plan:    victim selection (`plan_pass`; the default policy and lru, or --plan-policies, where `adaptive:ORDER` is
           adaptive settled on one of its orders) of --victims blocks from a --blocks SQLite catalog.
           Baseline: the bare `SELECT ... ORDER BY last_access LIMIT` with the stdlib sqlite3 module.  Goal < 1 s.
* delete:  `execute_plan` (RootGuard unlink + catalog rows + eviction log, recheck hook included) over --files
           fresh files, against a raw `os.unlink` loop over as many fresh files.  Goal >= 0.8x.
* ingest:  journal records → SQLite catalog (`JournalIngester`: read, decode, apply, offsets in one
           transaction).  Baseline: decoding alone (`JournalReader.read`).  Goal >= 100k records/s.
* rss:     peak RSS (VmHWM) of a real `kvfs-evictor` process over the --blocks catalog, through a pass that
           plans and applies --victims evictions.  Baseline: a bare interpreter importing the same modules.
           Goal < 300 MB.
* metaops: filesystem metadata syscalls (stat family, getdents64, statfs, openat) of a real `kvfs-evictor`
           under the watermark over a --tree-files tree, counted by strace over a steady-state window, per
           minute; next to llm-d's PVC evictor model (one stat per file per second) and the polling watcher.
Medians of --runs runs where a run is repeatable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from evictor.ingest import JournalIngester
from kvfs.catalog import BlockRow, Catalog
from kvfs.eviction import Limits, execute_plan, plan_pass
from kvfs.journal import JournalReader, JournalWriter
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY, get_policy
from kvfs.policy.adaptive import AdaptivePolicy
from kvfs.policy.chooser import Scores
from kvfs.replay.chooser import CANDIDATES

BLOCK_SIZE = 2 << 20
NAMESPACES = ["org_model-a_0123456789ab", "org_model-b_a1b2c3d4e5f6", "org_model-c_fedcba987654"]


def _median(values: list[float]) -> float:
    return statistics.median(values)


# Blocks a request stores in one go, in the ingest benchmark (a 16k-token prompt in 512-token blocks).
CHAIN_BLOCKS = 32


def _rows(n: int, *, seed: int = 7, now: float | None = None) -> list[BlockRow]:
    rng = random.Random(seed)
    now = time.time() if now is None else now
    rows = []
    for i in range(n):
        key = BlockKey(NAMESPACES[i % 3], i % 2, 0, f"{rng.getrandbits(128):032x}", "kvfs")
        t = now - 3600 - rng.random() * 86400
        rows.append(BlockRow(key, BLOCK_SIZE, t, t, chain_pos=i % 64))
    return rows


def build_catalog(path: Path, blocks: int) -> str:
    url = f"sqlite:///{path}"
    t0 = time.perf_counter()
    with Catalog.open(url) as cat:
        if cat.block_count() == blocks:  # --workdir kept from an earlier run
            print(f"  reusing the {blocks:,}-block catalog in {path}", flush=True)
            return url
        for start in range(0, blocks, 200_000):
            cat.upsert_blocks(_rows(min(200_000, blocks - start), seed=start))
    print(f"  built a {blocks:,}-block SQLite catalog in {time.perf_counter() - t0:.1f}s", flush=True)
    return url


# ---- plan ----------------------------------------------------------------------------------------------------
def bench_plan(url: str, db: Path, blocks: int, victims: int, runs: int, policy_name: str) -> dict[str, Any]:
    """The planning part of an evictor pass: `usage()` (capacity) then `plan_pass(usage=...)`, as the evictor's `PassRunner`."""
    policy = get_policy(policy_name.partition(":")[0])
    times, usage_times, base = [], [], []
    with Catalog.open(url) as cat:
        if isinstance(policy, AdaptivePolicy) and ":" in policy_name:
            # `adaptive:ORDER`: the chooser settled on ORDER (each pass then reads that order's streams); set
            # after the stored state is loaded, which it replaces.
            policy.attach(cat)
            scores = [0.0] * len(CANDIDATES)
            current = CANDIDATES.index(policy_name.partition(":")[2])
            scores[current] = 1.0
            policy.shadows.scores = Scores(tuple(scores), current)
        total = cat.usage().total_bytes
        limits = Limits(max_bytes=total - victims * BLOCK_SIZE, min_age=600)
        cpu = []
        for _ in range(runs):
            c0 = time.process_time()
            t0 = time.perf_counter()
            usage = cat.usage()
            t1 = time.perf_counter()
            plan = plan_pass(cat, limits, policy=policy, usage=usage)
            times.append(time.perf_counter() - t0)
            if ":" in policy_name:
                assert getattr(policy, "choice", None) == policy_name.partition(":")[2]
            cpu.append(time.process_time() - c0)
            usage_times.append(t1 - t0)
            assert len(plan.victims) == victims, (len(plan.victims), victims)
    for _ in range(runs):
        conn = sqlite3.connect(db)
        t0 = time.perf_counter()
        got = conn.execute(
            "select id, size from blocks where last_access < ? and created < ? "
            "order by last_access, chain_pos desc, id limit ?",
            (time.time() - 600, time.time() - 600, victims),
        ).fetchall()
        base.append(time.perf_counter() - t0)
        conn.close()
        assert len(got) == victims
    out = {
        "plan_s": _median(times),
        "plan_cpu_s": _median(cpu),
        "usage_s": _median(usage_times),
        "raw_select_s": _median(base),
        "victims": victims,
        "blocks": blocks,
        "policy": policy_name,
    }
    print(
        f"plan ({policy_name}): {victims:,} victims of {blocks:,} blocks in {out['plan_s']:.3f}s, {out['plan_cpu_s']:.3f}s CPU (usage() {out['usage_s']:.3f}s + "
        f"plan_pass; goal < 1 s); bare sqlite3 of the policy's ORDER BY ... LIMIT: {out['raw_select_s']:.3f}s "
        f"({out['plan_s'] / out['raw_select_s']:.1f}x); runs {[round(t, 3) for t in times]}",
        flush=True,
    )
    return out


# ---- delete --------------------------------------------------------------------------------------------------
def _make_files(root: Path, keys: list[BlockKey]) -> None:
    for key in keys:
        path = root / key.relpath()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        os.write(fd, b"k" * 4096)
        os.close(fd)


def _settle() -> None:
    # Evicted files are old: their creation is on disk.  Both sides start from that state (and neither pays
    # for the other's pending metadata writes).
    os.sync()
    time.sleep(0.5)


def bench_delete(work: Path, files: int, runs: int, catalog_dir: Path, chunk: int = 1000) -> dict[str, Any]:
    """The same number of old (synced) files on each side, deleted in alternating chunks of `chunk` files so
    both sides meet the same disk conditions (unlink of a synced file costs a journaled metadata write, and
    this disk's latency drifts); `execute_plan` runs once per chunk, its per-call costs included."""
    raw_rates, evict_rates = [], []
    for run in range(runs):
        root = work / f"delete-{run}"
        root.mkdir()
        rows = _rows(2 * files, seed=1000 + run)
        raw_keys = [r.key for r in rows[:files]]
        ev_rows = rows[files:]
        for r in ev_rows:
            r.size = 4096
        _make_files(root, [r.key for r in rows])
        paths = [str(root / k.relpath()) for k in raw_keys]
        raw_s = evict_s = 0.0
        db = catalog_dir / f"kvfs-bench-delete-{os.getpid()}-{run}.db"
        with Catalog.open(f"sqlite:///{db}") as cat:
            cat.upsert_blocks(ev_rows)
            plan = plan_pass(cat, Limits(max_bytes=0), policy=DEFAULT_POLICY)
            assert len(plan.victims) == files

            def recheck(batch: list[Any], cat: Catalog = cat) -> list[Any]:
                seen = cat.last_access_by_id([v.block_id for v in batch])  # what the evictor's recheck does
                return [v for v in batch if seen.get(v.block_id) == v.last_access]

            _settle()
            deleted = 0
            for n, start in enumerate(range(0, files, chunk)):
                sub = replace(plan, victims=plan.victims[start : start + chunk], temp_files=[])
                for side in ("raw", "evict") if n % 2 == 0 else ("evict", "raw"):
                    t0 = time.perf_counter()
                    if side == "raw":
                        for p in paths[start : start + chunk]:
                            os.unlink(p)
                        raw_s += time.perf_counter() - t0
                    else:
                        result = execute_plan(
                            root, cat, sub, dry_run=False, recheck=recheck, batch_size=chunk
                        )
                        evict_s += time.perf_counter() - t0
                        deleted += result.deleted_files
            assert deleted == files, deleted
        raw_rates.append(files / raw_s)
        evict_rates.append(files / evict_s)
        shutil.rmtree(root)
        for extra in ("", "-wal", "-shm"):
            Path(f"{db}{extra}").unlink(missing_ok=True)
    out = {"raw_unlink_per_s": _median(raw_rates), "evict_per_s": _median(evict_rates), "files": files}
    ratios = [e / r for e, r in zip(evict_rates, raw_rates, strict=True)]
    out["ratio"] = _median(ratios)
    out["catalog_dir"] = str(catalog_dir)
    print(
        f"delete (catalog in {catalog_dir}): execute_plan {out['evict_per_s']:,.0f} files/s (RootGuard + catalog rows + recheck) vs raw "
        f"os.unlink loop {out['raw_unlink_per_s']:,.0f} files/s over the same number of synced files: "
        f"{out['ratio']:.2f}x (goal >= 0.8x); per-run ratios {[round(x, 2) for x in ratios]}",
        flush=True,
    )
    return out


# ---- ingest --------------------------------------------------------------------------------------------------
def _chain_parents(rows: list[BlockRow], *, seed: int, chain: int = CHAIN_BLOCKS) -> dict[BlockKey, str]:
    """Parents as connectors record them: rows in chains of `chain` blocks per namespace and rank, each chain
    hanging off a block of an earlier batch (so the catalog's sibling check runs once per chain, as once per
    request in real traffic)."""
    rng = random.Random(seed)
    by_chain: dict[tuple[str, int | None], list[BlockRow]] = {}
    for r in rows:
        by_chain.setdefault((r.key.namespace, r.key.rank), []).append(r)
    parents: dict[BlockKey, str] = {}
    for members in by_chain.values():
        for i, r in enumerate(members):
            parents[r.key] = (
                f"{rng.getrandbits(128):032x}" if i % chain == 0 else members[i - 1].key.block_hash
            )
    return parents


def bench_ingest(work: Path, records: int, runs: int) -> dict[str, Any]:
    rates, decode_rates = [], []
    for run in range(runs):
        root = work / f"ingest-{run}"
        root.mkdir()
        rows = _rows(records // 2, seed=2000 + run)
        parents = _chain_parents(rows, seed=3000 + run)
        with JournalWriter(root, writer_id=f"bench-{run}", max_segment_bytes=64 << 20, fsync=False) as writer:
            for r in rows:
                writer.record_store(r.key, r.size, r.chain_pos, now=r.created, parent=parents[r.key])
            for r in rows:
                writer.record_access(r.key, now=r.created + 1)
        t0 = time.perf_counter()
        batch = JournalReader(root).read({})
        decode_rates.append(len(batch.records) / (time.perf_counter() - t0))
        assert len(batch.records) == 2 * len(rows)
        with Catalog.open(f"sqlite:///{work / f'ingest-{run}.db'}") as cat:
            ingester = JournalIngester(root, cat)
            t0 = time.perf_counter()
            stats = ingester.ingest()
            rates.append(stats.records / (time.perf_counter() - t0))
            assert stats.records == 2 * len(rows) and cat.block_count() == len(rows)
        shutil.rmtree(root)
    out = {"records_per_s": _median(rates), "decode_only_per_s": _median(decode_rates), "records": records}
    print(
        f"ingest: {out['records_per_s']:,.0f} records/s into SQLite (goal >= 100k/s); decoding alone "
        f"{out['decode_only_per_s']:,.0f} records/s ({out['records_per_s'] / out['decode_only_per_s']:.2f}x)",
        flush=True,
    )
    return out


# ---- real evictor processes ----------------------------------------------------------------------------------
def _spawn(args: list[str], log: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    cmd = [*(prefix or []), sys.executable, "-m", "evictor", *args]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115


def _port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"http :(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m[1])
        if proc.poll() is not None:
            raise RuntimeError(f"evictor exited: {log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError("evictor did not start")


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as resp:
        return json.load(resp)


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def bench_rss(work: Path, url: str, blocks: int, victims: int) -> dict[str, Any]:
    root = work / "rss-root"
    root.mkdir(exist_ok=True)
    with Catalog.open(url) as cat:
        total = cat.usage().total_bytes
    # Over the high watermark by `victims` blocks' worth beyond the low one: one pass plans and applies them
    # (the files do not exist: RootGuard reports them missing and their rows go, the real code path).
    max_bytes = int((total - victims * BLOCK_SIZE) / 0.90)  # low watermark 90%, high 95%
    log = work / "rss.log"
    args = ["--root", str(root), "--catalog", url, "--max-bytes", str(max_bytes), "--no-startup-scan",
            "--scan-interval", "0", "--watch", "off", "--min-age", "0", "--metrics-host", "127.0.0.1",
            "--metrics-port", "0", "--enforce-interval", "1", "--high-watermark", "95",
            "--low-watermark", "90"]  # fmt: skip
    proc = _spawn(args, log)
    try:
        port = _port(log, proc)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            last = _status(port).get("last_pass")
            if last and last.get("result"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"no eviction pass within 300s: {log.read_text()[-2000:]}")
        time.sleep(3)  # a few more passes over the now smaller catalog
        hwm, rss = _vm(proc.pid, "VmHWM"), _vm(proc.pid, "VmRSS")
        result = last["result"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    bare = subprocess.run(
        [sys.executable, "-c", "import evictor.service, kvfs.catalog, kvfs.eviction, kvfs.scan, watchdog;"
         "print(open('/proc/self/status').read())"],  # fmt: skip
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    bare_hwm = int(re.search(r"VmHWM:\s+(\d+)", bare.stdout)[1]) * 1024  # type: ignore[index]
    out = {
        "peak_rss_bytes": hwm,
        "rss_after_bytes": rss,
        "bare_import_rss_bytes": bare_hwm,
        "pass_deleted_files": result["deleted_files"] + result.get("missing", 0),
        "pass_duration_s": last["duration_s"],
        "pass_plan_s": last["plan_s"],
    }
    print(
        f"rss: evictor peak {hwm / 2**20:.0f} MiB (goal < 300 MB) over a {blocks:,}-block catalog, through a pass "
        f"of {out['pass_deleted_files']:,} evictions (plan {last['plan_s']:.2f}s, pass {last['duration_s']:.1f}s); "
        f"bare interpreter with the same imports {bare_hwm / 2**20:.0f} MiB",
        flush=True,
    )
    return out


def _count_syscalls(
    trace: Path, t_from: float, t_to: float, root: Path
) -> tuple[dict[str, int], dict[str, int]]:
    """Syscall counts in the window, by name and by what they touched: the journal folder, the rest of the
    tree, other paths (catalog, libraries), or a descriptor (fstat as newfstatat(fd, ""), getdents64)."""
    by_name: dict[str, int] = {}
    by_target = {"journal": 0, "tree": 0, "other": 0, "fd": 0}
    pat = re.compile(r'^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\d+\.\d+)\s+(\w+)\(([^"]*)(?:"([^"]*)")?')
    journal = str(root / ".kvfs" / "journal")
    for line in trace.read_text(errors="replace").splitlines():
        m = pat.match(line)
        if not m or not t_from <= float(m[1]) <= t_to:
            continue
        by_name[m[2]] = by_name.get(m[2], 0) + 1
        path = m[4]
        if not path:
            by_target["fd"] += 1
        elif path.startswith(journal):
            by_target["journal"] += 1
        elif path.startswith(str(root)):
            by_target["tree"] += 1
        else:
            by_target["other"] += 1
    return by_name, by_target


def bench_metaops(work: Path, tree_files: int, window: float) -> dict[str, Any]:
    if shutil.which("strace") is None:
        print("metaops: skipped (strace not installed)")
        return {}
    root = work / "meta-root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    _make_files(root, [r.key for r in _rows(tree_files, seed=3000)])
    results: dict[str, Any] = {"tree_files": tree_files, "window_s": window}
    for mode in ("off", "inotify", "polling"):
        url = f"sqlite:///{work / f'meta-{mode}.db'}"
        for extra in ("", "-wal", "-shm"):
            Path(f"{work / f'meta-{mode}.db'}{extra}").unlink(missing_ok=True)
        trace = work / f"meta-{mode}.strace"
        log = work / f"meta-{mode}.log"
        poll = 2.0
        args = ["--root", str(root), "--catalog", url, "--max-bytes", "1PB", "--watch", mode,
                "--watch-poll-interval", str(poll), "--min-age", "0", "--metrics-host", "127.0.0.1",
                "--metrics-port", "0", "--enforce-interval", "5", "--journal-interval", "1"]  # fmt: skip
        prefix = ["strace", "-f", "-ttt", "-qq", "-o", str(trace),
                  "-e", "trace=%stat,%lstat,%fstat,%statfs,getdents64,openat,unlink,unlinkat"]  # fmt: skip
        proc = _spawn(args, log, prefix)
        try:
            port = _port(log, proc, timeout=120)
            deadline = time.monotonic() + 300
            while not _status(port).get("last_scan"):
                if time.monotonic() > deadline:
                    raise RuntimeError("no start-up scan")
                time.sleep(0.5)
            time.sleep(2 * poll + 1)  # past the polling watcher's initial snapshot
            t_from = time.time()
            time.sleep(window)
            t_to = time.time()
            status = _status(port)
            passes = status["last_pass"]
        finally:
            # SIGTERM to the evictor itself (strace would only detach); strace ends with its tracee.
            try:
                os.kill(_status(port)["pid"], signal.SIGTERM)
            except Exception:  # noqa: BLE001 - not started: stop strace and its child
                proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        counts, targets = _count_syscalls(trace, t_from, t_to, root)
        total = sum(counts.values())
        per_min = total * 60 / window
        scale = poll / 30.0  # the default watch_poll_interval is 30 s
        tree_per_min = targets["tree"] * 60 / window
        results[mode] = {
            "syscalls": counts,
            "targets": targets,
            "per_minute": per_min,
            "tree_per_minute": tree_per_min,
            "last_pass": bool(passes),
        }
        extra = (
            f" (at the default 30 s poll interval: {per_min * scale:,.0f}/min)" if mode == "polling" else ""
        )
        print(
            f"metaops: watch={mode}: {per_min:,.0f} metadata syscalls/min under the watermark over "
            f"{tree_files:,} files, {tree_per_min:,.0f}/min on block-tree paths{extra}; "
            f"{dict(sorted(counts.items()))}; by target {targets}",
            flush=True,
        )
        trace.unlink()
    llmd = tree_files * 60
    results["llmd_model_per_minute"] = llmd
    print(f"metaops: llm-d PVC evictor model (1 stat per file per second): {llmd:,} stats/min", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.evictor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--victims", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=4_000)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--tree-files", type=int, default=20_000)
    ap.add_argument("--window", type=float, default=20.0, help="metaops measurement window, seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--catalog-dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
        help="delete step: where its SQLite catalog lives (production keeps the catalog on a local disk, "
        "not on the mount whose files it deletes; the step is repeated with the catalog beside the files)",
    )
    ap.add_argument("--only", default="plan,delete,ingest,rss,metaops")
    ap.add_argument(
        "--plan-policies",
        default=None,
        help="plan step: policies to time, comma-separated (default: the default and lru); "
        "`adaptive:ORDER` times adaptive settled on one of its orders (shares, s3fifo, 2q, prefix)",
    )
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir, removed)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kvfs-evictor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"evictor bench in {work} (cpus: {os.cpu_count()})", flush=True)
    figures: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = []
    plan_policies = (
        args.plan_policies.split(",") if args.plan_policies else list(dict.fromkeys([DEFAULT_POLICY, "lru"]))
    )
    db = work / "big.db"
    url = f"sqlite:///{db}"
    if only & {"plan", "rss"}:
        steps.append(("build", lambda: build_catalog(db, args.blocks)))
    steps += [
        (
            "plan",
            lambda: [bench_plan(url, db, args.blocks, args.victims, args.runs, p) for p in plan_policies],
        ),
        ("delete", lambda: bench_delete(work, args.files, args.runs, Path(args.catalog_dir))),
        ("delete_same_fs", lambda: bench_delete(work, args.files, args.runs, work)),
        ("ingest", lambda: bench_ingest(work, args.records, args.runs)),
        ("rss", lambda: bench_rss(work, url, args.blocks, args.victims)),
        ("metaops", lambda: bench_metaops(work, args.tree_files, args.window)),
    ]
    try:
        for name, step in steps:
            if name == "build" or name in only or (name == "delete_same_fs" and "delete" in only):
                figures[name] = step()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
