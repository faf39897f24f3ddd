"""`make demo`: the whole system end to end on a local directory and an SQLite catalog, in about a minute.

1. generates a prefix-reuse trace (`tools.tracegen`, mixed chat / agent / one-off traffic);
2. starts `kvfs-evictor` (the real service, a subprocess) with a capacity cap well below the trace's footprint;
3. runs several engine-like processes that replay the trace through the connector's real I/O path: the
   connector's `IoPool` moves KV blocks between KV-cache tensors (CPU, or the GPU when torch sees one) and
   kvfs block files, journals stores and accesses like the vLLM plug-in does, and every loaded block is
   checked byte for byte (no vLLM, no model: the "compute" fills a block's KV rows with its own pattern);
4. shows live progress: requests, prefix hit ratio, bytes stored and loaded, usage against the cap, evictions;
5. stops the evictor, prints `kvfs du` and a summary, with what `kvfs replay` predicts for the same trace.

Everything lives in one folder (`./demo-data`, `--dir` or `$KVFS_DEMO_DIR`), recreated on every run (only if
this demo created it).  `python -m tools.demo --quick` is a smaller run (the test suite uses it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from kvfs.procs import stop_gracefully
from kvfs.units import format_size

MARKER = ".kvfs-demo"
MODEL = "demo/Llama-3.1-8B-like"
LAYERS = 4
PAGE_BYTES = 16 << 10  # one layer's share of a block file: files are LAYERS * PAGE_BYTES = 64 KiB of payload
KV_SLOTS = 512  # rows of the per-process KV-cache tensors (the "GPU blocks" of the engine)
# Per-worker counters in a shared array: index → name.
STATS = ("requests", "blocks", "hit_blocks", "stored_bytes", "loaded_bytes", "load_misses", "bad_payloads")


@dataclass(frozen=True)
class DemoConfig:
    requests: int
    workers: int
    seconds: float  # the trace is replayed over about this long
    capacity_fraction: float  # cap = this fraction of the trace's unique blocks
    seed: int = 0


FULL = DemoConfig(requests=900, workers=3, seconds=45.0, capacity_fraction=0.1)
QUICK = DemoConfig(requests=150, workers=2, seconds=8.0, capacity_fraction=0.1)


def offload_key(block: int) -> bytes:
    """The vLLM offload key of trace block `block`: a 16-byte hash and the 4-byte KV group index (0)."""
    return hashlib.sha256(f"{MODEL}|{block}".encode()).digest()[:16] + b"\0\0\0\0"


def pattern_of(block: int) -> int:
    """The byte every KV row of `block` holds (int8: 1..127; 0 marks a slot cleared before a load)."""
    return block % 127 + 1


# --- one engine-like worker process --------------------------------------------------------------------------


class Engine:
    """What a vLLM worker with the kvfs connector does per request, minus the model: look up the leading run of
    chunks on the tier, load it through the connector's `IoPool` into the KV tensors (CPU here), compute the
    rest (fill its KV rows) and store it.  The pool journals stores; lookups journal accesses, as the
    connector's scheduler side does.  Imports torch and the connector only in the engine processes."""

    def __init__(self, index: int, root: str, device: str) -> None:
        import torch

        from connector.access import AccessRecorder
        from connector.copier import GroupCopier
        from connector.iopool import IoPool
        from connector.naming import NamespaceDir
        from kvfs.journal import JournalWriter
        from kvfs.layout import kvfs_fields

        torch.set_num_threads(1)
        dev = torch.device(device)
        self.ns = NamespaceDir(
            root=root, fields=kvfs_fields({"model_name": MODEL, "dtype": "int8", "demo": True})
        )
        self.ns.publish_config()
        self.kv = [torch.zeros((KV_SLOTS, PAGE_BYTES), dtype=torch.int8, device=dev) for _ in range(LAYERS)]
        self.copier = GroupCopier(self.kv, [PAGE_BYTES] * LAYERS, use_triton=dev.type == "cuda")
        self.journal = JournalWriter(root, writer_id=f"demo-engine-{index}", flush_interval=0.2)
        self.recorder = AccessRecorder(self.journal, self.ns)
        self.pool = IoPool(
            threads=2,
            max_file_bytes=self.copier.payload_bytes(1),
            device=dev,
            store_budget_s=30.0,
            journal=self.journal,
        )
        self.job = 0
        self.next_slot = 0

    def _ops(self, is_load: bool, keys: list[bytes], slots: list[int], stamp: float) -> tuple[int, list[Any]]:
        from connector.iopool import FileOp
        from connector.naming import file_identity_key
        from kvfs.blockfile import BlockIdentity

        self.job += 1
        ops = [
            FileOp(
                job_id=self.job,
                is_load=is_load,
                path=self.ns.path(key),
                ident=BlockIdentity(self.ns.fingerprint, file_identity_key(key, 0, 1)),
                copier=self.copier,
                block_ids=[slot],
                first=0,
                file_blocks=1,
                block_key=self.ns.block_key(key),
                stamp=stamp,
            )
            for key, slot in zip(keys, slots, strict=True)
        ]
        return self.job, ops

    def _run(self, is_load: bool, keys: list[bytes], slots: list[int], stamp: float) -> Any:
        job, ops = self._ops(is_load, keys, slots, stamp)
        self.pool.submit(job, ops, is_load=is_load)
        self.pool.wait([job])
        return next(d for d in self.pool.take_finished() if d.job_id == job)

    def serve(self, blocks: tuple[int, ...]) -> dict[str, int]:
        keys = [offload_key(b) for b in blocks]
        slots = [(self.next_slot + i) % KV_SLOTS for i in range(len(keys))]
        self.next_slot = (self.next_slot + len(keys)) % KV_SLOTS
        out = dict.fromkeys(STATS, 0)
        out["requests"], out["blocks"] = 1, len(keys)
        stamp = time.time()  # every journal record of the request carries its time, as the connector's do
        # Lookup: the leading run of chunks whose file exists.
        run = 0
        while run < len(keys) and os.path.exists(self.ns.path(keys[run])):
            run += 1
        hit = 0
        if run:
            self.recorder.record(keys[:run], now=stamp)
            for slot in slots[:run]:
                for layer in self.kv:
                    layer[slot].zero_()  # so a verified row can only have come from the file
            done = self._run(True, keys[:run], slots[:run], stamp)
            failed = set(done.failed_block_ids)
            while hit < run and slots[hit] not in failed:  # a file evicted since the lookup: recomputed
                hit += 1
            out["bad_payloads"] = sum(
                1
                for i in range(hit)
                if not all(bool((layer[slots[i]] == pattern_of(blocks[i])).all()) for layer in self.kv)
            )
            out["hit_blocks"], out["loaded_bytes"], out["load_misses"] = hit, done.nbytes, run - hit
        if hit < len(keys):
            for i in range(hit, len(keys)):
                for layer in self.kv:
                    layer[slots[i]].fill_(pattern_of(blocks[i]))  # "compute" the block's KV
            out["stored_bytes"] = self._run(False, keys[hit:], slots[hit:], stamp).nbytes
        return out

    def close(self) -> None:
        self.pool.shutdown()
        self.recorder.close()


def engine_main(
    index: int,
    root: str,
    device: str,
    trace_path: str,
    workers: int,
    seconds: float,
    stats: Any,
    start_at: float,
) -> None:
    """Serve every `workers`-th request of the trace, in trace order, spread evenly over `seconds`."""
    from kvfs.trace import read_trace

    trace = read_trace(trace_path)
    engine = Engine(index, root, device)
    base = index * len(STATS)
    try:
        for n in range(index, len(trace), workers):
            delay = start_at + seconds * n / len(trace) - time.time()
            if delay > 0:
                time.sleep(delay)
            for i, value in enumerate(engine.serve(trace[n].hash_ids).values()):
                stats[base + i] += value
    finally:
        engine.close()


# --- the orchestrator ---------------------------------------------------------------------------------------


def prepare(data: Path) -> tuple[Path, Path]:
    """A fresh `data/root` and catalog path; refuses to wipe a directory this demo did not create."""
    if data.exists():
        if not (data / MARKER).exists():
            raise click.ClickException(f"{data} exists and was not created by the demo; use --dir")
        shutil.rmtree(data)
    data.mkdir(parents=True)
    (data / MARKER).write_text("created by `python -m tools.demo`; deleted and recreated on every run\n")
    root = data / "root"
    root.mkdir()
    return root, data / "catalog.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_evictor(root: Path, catalog: str, cap: int, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "evictor",
        "--root", str(root),
        "--catalog", catalog,
        "--max-bytes", str(cap),
        "--high-watermark", "90",
        "--low-watermark", "75",
        "--min-age", "1s",
        "--enforce-interval", "0.5s",
        "--journal-interval", "0.25s",
        "--scan-interval", "0",
        "--metrics-host", "127.0.0.1",
        "--metrics-port", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def evictor_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"kvfs-evictor exited ({proc.returncode}); see {log_path}")
        status = evictor_status(port)
        if status and status.get("ready") and status.get("leader"):
            return
        time.sleep(0.2)
    raise click.ClickException(f"kvfs-evictor not ready after {timeout:.0f}s; see {log_path}")


@dataclass
class Snapshot:
    requests: int = 0
    blocks: int = 0
    hit_blocks: int = 0
    stored_bytes: int = 0
    loaded_bytes: int = 0
    load_misses: int = 0
    bad_payloads: int = 0
    catalog_files: int = 0
    catalog_bytes: int = 0
    evicted_files: int = 0
    evicted_bytes: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hit_blocks / self.blocks if self.blocks else 0.0


def snapshot(stats: Any, workers: int, db: Path) -> Snapshot:
    snap = Snapshot()
    for name_index, name in enumerate(STATS):
        setattr(snap, name, int(sum(stats[w * len(STATS) + name_index] for w in range(workers))))
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            snap.catalog_files, snap.catalog_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM blocks"
            ).fetchone()
            snap.evicted_files, snap.evicted_bytes = conn.execute(
                "SELECT coalesce(sum(files), 0), coalesce(sum(bytes), 0) FROM evictions WHERE reason = 'capacity'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        pass  # the evictor has not created the catalog yet
    return snap


class Live:
    """A table redrawn in place on a terminal; one line every few seconds otherwise (logs, CI)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.lines = 0
        self.last_plain = 0.0

    def show(self, snap: Snapshot, total: int, cap: int, elapsed: float, final: bool = False) -> None:
        rows = [
            f"  requests      {snap.requests:>7} / {total:<7}  elapsed {elapsed:5.1f}s",
            f"  prefix hits   {snap.hit_ratio:7.1%} of {snap.blocks} blocks  "
            f"(load misses {snap.load_misses}, bad payloads {snap.bad_payloads})",
            f"  stored        {format_size(snap.stored_bytes):>10}   loaded {format_size(snap.loaded_bytes):>10}",
            f"  usage         {format_size(snap.catalog_bytes):>10} / cap {format_size(cap)}  "
            f"{_bar(snap.catalog_bytes / cap if cap else 0)}",
            f"  evictions     {snap.evicted_files:>7} files  {format_size(snap.evicted_bytes):>10}",
        ]
        if self.tty:
            if self.lines:
                sys.stdout.write(f"\x1b[{self.lines}F")
            sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in rows))
            sys.stdout.flush()
            self.lines = len(rows)
        elif final or time.monotonic() - self.last_plain >= 3.0:
            self.last_plain = time.monotonic()
            click.echo(
                f"  [{elapsed:5.1f}s] requests {snap.requests}/{total}  hits {snap.hit_ratio:.1%}  "
                f"usage {format_size(snap.catalog_bytes)}/{format_size(cap)}  "
                f"evicted {snap.evicted_files} files"
            )


def _bar(ratio: float, width: int = 24) -> str:
    filled = min(width, int(round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {ratio:5.0%}"


def tree_bytes(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith(".kvfs"):
                files += 1
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return files, total


def pick_device(choice: str) -> str:
    """`auto`: the GPU when torch sees one (the connector's real DMA path), else CPU tensors."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def du_command(root: Path, catalog_url: str) -> str:
    """`kvfs du` for the demo's tree and catalog, ready to paste into a shell."""
    return f"KVFS_ROOT={shlex.quote(str(root))} KVFS_CATALOG={shlex.quote(catalog_url)} kvfs du"


def run_demo(data: Path, cfg: DemoConfig, device: str = "cpu") -> int:
    from kvfs.blockfile import HEADER_SIZE
    from kvfs.cli import main as kvfs_cli
    from kvfs.replay import replay, unique_blocks
    from tools.tracegen import generate, write_trace

    started = time.monotonic()
    root, db = prepare(data)
    catalog_url = f"sqlite:///{db}"
    trace_path = data / "trace.jsonl"
    trace = generate("mixed", requests=cfg.requests, seed=cfg.seed)
    with trace_path.open("w") as fh:
        write_trace(trace, fh)
    blocks = [r.hash_ids for r in trace]
    unique = unique_blocks(blocks)
    file_bytes = HEADER_SIZE + LAYERS * PAGE_BYTES
    cap_blocks = max(1, int(unique * cfg.capacity_fraction))
    cap = cap_blocks * file_bytes
    click.echo(f"kvfs demo in {data}")
    click.echo(
        f"  trace: {len(trace)} requests, {sum(map(len, blocks))} blocks of 512 tokens, {unique} unique "
        f"({format_size(unique * file_bytes)} of block files); cap {format_size(cap)} "
        f"({cfg.capacity_fraction:.0%} of the footprint)"
    )

    port = free_port()
    log_path = data / "evictor.log"
    evictor = start_evictor(root, catalog_url, cap, port, log_path)
    engines: list[Any] = []
    try:
        wait_ready(evictor, port, log_path)
        click.echo(
            f"  kvfs-evictor pid {evictor.pid} is leader (http://127.0.0.1:{port}/status, log {log_path})"
        )
        click.echo(
            f"  {cfg.workers} engine processes replay the trace over ~{cfg.seconds:.0f}s "
            f"(KV tensors on {device}, connector IoPool, 2 I/O threads each)"
        )
        ctx = mp.get_context("spawn")
        stats = ctx.Array("d", cfg.workers * len(STATS), lock=False)
        start_at = time.time() + 3.0  # the engines import torch first
        for i in range(cfg.workers):
            proc = ctx.Process(
                target=engine_main,
                args=(i, str(root), device, str(trace_path), cfg.workers, cfg.seconds, stats, start_at),
                name=f"demo-engine-{i}",
            )
            proc.start()
            engines.append(proc)
        live = Live()
        peak = 0
        while any(p.is_alive() for p in engines):
            snap = snapshot(stats, cfg.workers, db)
            peak = max(peak, snap.catalog_bytes)
            live.show(snap, len(trace), cap, time.monotonic() - started)
            time.sleep(0.5)
        failed = [p.name for p in engines if p.exitcode != 0]
        if failed:
            raise click.ClickException(f"engine process(es) failed: {', '.join(failed)}")
        # Let the evictor ingest the last journal records and finish its pass.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            snap = snapshot(stats, cfg.workers, db)
            status = evictor_status(port) or {}
            if snap.catalog_bytes <= cap * 0.9 and (status.get("journal") or {}).get("backlog_bytes", 1) == 0:
                break
            time.sleep(0.5)
        snap = snapshot(stats, cfg.workers, db)
        live.show(snap, len(trace), cap, time.monotonic() - started, final=True)
    finally:
        for proc in engines:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
        stop_gracefully(evictor, 20)

    # The command as a user would type it afterwards: `kvfs du` alone reads the default root and catalog, not
    # the demo's.
    click.echo(f"\n$ {du_command(root, catalog_url)}")
    kvfs_cli.main(["--root", str(root), "--catalog", catalog_url, "du"], standalone_mode=False)

    files_on_disk, bytes_on_disk = tree_bytes(root)
    predicted = replay(blocks, cap_blocks)
    click.echo("\nsummary")
    click.echo(f"  requests served      {snap.requests} by {cfg.workers} engine processes sharing one tier")
    click.echo(
        f"  prefix hit ratio     {snap.hit_ratio:.1%} ({snap.hit_blocks} of {snap.blocks} blocks loaded from "
        f"files, {snap.load_misses} lost to evictions between lookup and load, "
        f"{snap.bad_payloads} bad payloads)"
    )
    click.echo(
        f"  data moved           {format_size(snap.stored_bytes)} stored, {format_size(snap.loaded_bytes)} loaded"
    )
    click.echo(
        f"  evicted              {snap.evicted_files} files ({format_size(snap.evicted_bytes)}) by kvfs-evictor, "
        f"policy {predicted.policy}"
    )
    click.echo(
        f"  tier now             {files_on_disk} files, {format_size(bytes_on_disk)} on disk; cap {format_size(cap)}; "
        f"peak in catalog {format_size(peak)}"
    )
    click.echo(
        f"  kvfs replay          {predicted.policy} {predicted.hit_ratio:.1%}, lru {predicted.lru_hit_ratio:.1%}, "
        f"belady {predicted.belady_hit_ratio:.1%} on this trace at the same cap ({cap_blocks} blocks), held "
        "exactly, in one process (the live tier runs over its cap between passes)"
    )
    click.echo(f"  evictor exit code    {evictor.returncode}; everything is in {data}")
    click.echo(f"  took {time.monotonic() - started:.0f}s")
    ok = snap.bad_payloads == 0 and evictor.returncode == 0 and snap.requests == len(trace)
    return 0 if ok else 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="A smaller, faster run (the test suite uses it).")
@click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KVFS_DEMO_DIR",
    default=Path("demo-data"),
    show_default=True,
    help="Folder for everything the demo writes (recreated on every run).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the engines' KV tensors live.",
)
def main(quick: bool, data_dir: Path, device: str) -> None:
    """Run kvfs end to end: evictor, engine processes through the connector I/O path, live progress, du."""
    rc = run_demo(data_dir.resolve(), QUICK if quick else FULL, pick_device(device))
    sys.exit(rc)


if __name__ == "__main__":
    main()
