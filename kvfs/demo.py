"""`make demo`: a small end-to-end run of the kvfs core on a local directory and an SQLite catalog.

Writes real kvfs block files (two models, one with two tensor-parallel ranks) and journals their stores and
re-reads the way the connector does, leaves a crashed writer's temp file behind, then runs the `kvfs` CLI:
scan, du, gc with a capacity cap (plus old temp files), ls, verify.  Everything lives under `./demo-data`
(or `$KVFS_DEMO_DIR`), which is recreated on every run, so running it twice gives the same result.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from pathlib import Path

import click

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import Catalog
from kvfs.cli import main as kvfs_cli
from kvfs.journal import JournalWriter
from kvfs.layout import BlockKey, fingerprint_sha256, kvfs_fields, namespace_name, write_namespace_config
from kvfs.units import format_size

MARKER = ".kvfs-demo"
BLOCK_BYTES = 64 * 1024
MODELS = (
    # model, tensor-parallel ranks, conversations, blocks per conversation prefix
    ("meta-llama/Llama-3.1-8B-Instruct", (0, 1), 12, 8),
    ("Qwen/Qwen2.5-7B-Instruct", (None,), 16, 6),
)
SIM_SPAN_S = 4 * 3600.0  # simulated traffic over the last four hours


def prepare(data: Path) -> tuple[Path, Path]:
    """A fresh `data/root` and catalog path; refuses to wipe a directory this demo did not create."""
    if data.exists():
        if not (data / MARKER).exists():
            raise click.ClickException(f"{data} exists and was not created by the demo; set KVFS_DEMO_DIR")
        shutil.rmtree(data)
    data.mkdir(parents=True)
    (data / MARKER).write_text("created by `python -m kvfs.demo`; deleted and recreated on every run\n")
    root = data / "root"
    root.mkdir()
    return root, data / "catalog.db"


def chain_hashes(model: str, conversation: int, length: int) -> list[str]:
    """Content-addressed prefix chain: each block's hash covers its parent's, as vLLM's block hashes do."""
    parent = b""
    out = []
    for pos in range(length):
        parent = hashlib.sha256(parent + f"{model}|{conversation}|{pos}".encode()).digest()
        out.append(parent.hex()[:32])
    return out


def write_traffic(root: Path, rng: random.Random, now: float) -> tuple[dict[str, int], set[BlockKey]]:
    """Store every conversation's prefix chain as block files (+ journal), then re-read some of them."""
    stats = {"blocks": 0, "bytes": 0, "rereads": 0}
    last_path = root
    writer = JournalWriter(root, writer_id="demo-engine")
    rereads: list[tuple[BlockKey, float]] = []
    try:
        for model, ranks, conversations, length in MODELS:
            fields = kvfs_fields(
                {"model_name": model, "block_size": 16, "dtype": "bfloat16", "tp": len(ranks)}
            )
            write_namespace_config(root, fields)
            ns, fingerprint = namespace_name(fields), fingerprint_sha256(fields)
            for conv in range(conversations):
                stored_at = now - SIM_SPAN_S + rng.uniform(0, SIM_SPAN_S * 0.8)
                for pos, block_hash in enumerate(chain_hashes(model, conv, length)):
                    for rank in ranks:
                        key = BlockKey(ns, rank, 0, block_hash, "kvfs")
                        path = root / key.relpath()
                        payload = rng.randbytes(BLOCK_BYTES)
                        result = store_block(
                            path, payload, BlockIdentity(fingerprint, bytes.fromhex(block_hash))
                        )
                        if result.outcome is not StoreOutcome.STORED:
                            raise click.ClickException(f"could not store {path}: {result.error}")
                        os.utime(path, (stored_at, stored_at))  # the simulated store time
                        last_path = path
                        writer.record_store(key, path.stat().st_size, chain_pos=pos, now=stored_at)
                        stats["blocks"] += 1
                        stats["bytes"] += path.stat().st_size
                        # A third of conversations come back later and re-read a prefix of their chain.
                        if conv % 3 == 0 and pos < length // 2:
                            rereads.append((key, rng.uniform(stored_at, now)))
        for key, when in rereads:
            writer.record_access(key, now=when)
            stats["rereads"] += 1
    finally:
        writer.close()
    # A writer killed mid-write two hours ago left its temp file behind.
    orphan = last_path.with_name(last_path.name + "_9f3a1c0de2b4a6f8.tmp")
    orphan.write_bytes(b"\0" * (BLOCK_BYTES // 2))
    os.utime(orphan, (now - 7200, now - 7200))
    return stats, {key for key, _ in rereads}


def kvfs(root: Path, catalog: Path, *args: str) -> None:
    click.secho(f"\n$ kvfs {' '.join(args)}", bold=True)
    kvfs_cli.main(
        ["--root", str(root), "--catalog", f"sqlite:///{catalog}", *args], "kvfs", standalone_mode=False
    )


def run(data: Path) -> None:
    start = time.monotonic()
    rng = random.Random(20240901)
    root, catalog_path = prepare(data)
    now = time.time()
    stats, reread = write_traffic(root, rng, now)
    click.echo(
        f"wrote {stats['blocks']} kvfs block files ({format_size(stats['bytes'])}) for {len(MODELS)} models "
        f"under {root}, journaled {stats['blocks']} stores and {stats['rereads']} re-reads"
    )
    cap = stats["bytes"] * 6 // 10
    kvfs(root, catalog_path, "scan")
    kvfs(root, catalog_path, "du")
    kvfs(root, catalog_path, "du", "--by", "rank")
    kvfs(root, catalog_path, "gc", "--max-bytes", str(cap), "--orphans-older-than", "1h", "--min-age", "10m")
    with Catalog.open(f"sqlite:///{catalog_path}") as catalog:
        namespaces = sorted(u.namespace for u in catalog.usage().namespaces)
        after = catalog.usage()
        log = catalog.eviction_log()
        kept = {row.key for row in catalog.iter_blocks()}
    kvfs(root, catalog_path, "ls", namespaces[0], "--limit", "5")
    kvfs(root, catalog_path, "du")
    kvfs(root, catalog_path, "verify")
    freed = sum(e.bytes for e in log)
    by_reason: dict[str, int] = {}
    for entry in log:
        by_reason[entry.reason] = by_reason.get(entry.reason, 0) + entry.files
    click.secho("\nsummary", bold=True)
    click.echo(
        f"  before: {stats['blocks']} blocks, {format_size(stats['bytes'])}; cap {format_size(cap)}\n"
        f"  after:  {after.total_files} blocks, {format_size(after.total_bytes)} "
        f"({'within' if after.total_bytes <= cap else 'OVER'} the cap)\n"
        f"  evicted: {', '.join(f'{n} {reason}' for reason, n in by_reason.items())}; {format_size(freed)} freed\n"
        f"  kept {len(kept & reread)} of {len(reread)} re-read blocks (journaled accesses) and "
        f"{len(kept - reread)} of {stats['blocks'] - len(reread)} blocks never re-read\n"
        f"  done in {time.monotonic() - start:.1f}s; data in {data} (recreated on the next run)"
    )
    if after.total_bytes > cap:
        raise click.ClickException("the gc pass left usage over the cap")


def cli_main() -> None:
    data = Path(os.environ.get("KVFS_DEMO_DIR", "demo-data")).absolute()
    try:
        run(data)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    cli_main()
