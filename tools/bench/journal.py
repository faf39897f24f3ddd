"""Journal speed: append cost, writer flush (encode + write) and reader decode rates, next to the raw read.

    python -m tools.bench.journal [--records 200000] [--runs 5] [--dir DIR] [--json]

Figures, medians of `--runs`:
* append: nanoseconds per `JournalWriter.append` (the serving path's cost: an enqueue);
* flush: records/s encoded and written to a segment by `flush()` (what the background thread sustains);
* decode: records/s of `decode_records` over the segment bytes in memory;
* read: records/s of `JournalReader.read` from the segment files (pread + decode + offsets);
* limit: the raw `pread` of the same files in MB/s and in records/s at the measured bytes per record.
The evictor must ingest >= 100k records/s into SQLite, so the reader must run well above that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvfs.journal import JournalReader, JournalRecord, JournalWriter, RecordKind, decode_records
from kvfs.layout import BlockKey, journal_dir

TARGET_RECORDS_PER_S = 100_000
NAMESPACES = [
    ("org_llama-8b_0123456789ab", None),
    ("org_qwen-32b_a1b2c3d4e5f6", 0),
    ("org_qwen-32b_a1b2c3d4e5f6", 1),
]


def make_records(n: int, seed: int = 7) -> list[JournalRecord]:
    rng = random.Random(seed)
    now = time.time()
    out = []
    for i in range(n):
        ns, rank = NAMESPACES[i % len(NAMESPACES)]
        key = BlockKey(ns, rank, 0, f"{rng.getrandbits(256):064x}", "kvfs")
        kind = RecordKind.STORE if i % 4 == 0 else RecordKind.ACCESS
        out.append(
            JournalRecord(kind, key, now + i * 1e-4, 2 << 20 if kind is RecordKind.STORE else 0, i % 64)
        )
    return out


def run_once(base: Path, records: list[JournalRecord]) -> dict[str, float]:
    root = base / f"run-{time.monotonic_ns()}"
    n = len(records)
    writer = JournalWriter(
        root, writer_id="bench", flush_interval=1.0, max_segment_bytes=1 << 30, fsync=False
    )
    try:
        t0 = time.perf_counter()
        for rec in records:
            writer.append(rec)
        append_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.flush()
        flush_s = time.perf_counter() - t0
    finally:
        writer.close()
    segments = sorted(journal_dir(root).iterdir())
    nbytes = sum(p.stat().st_size for p in segments)
    t0 = time.perf_counter()
    raw = b"".join(_pread_all(p) for p in segments)
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = decode_records(raw, final=True)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = JournalReader(root).read({})
    read_s = time.perf_counter() - t0
    if len(decoded.records) != n or len(batch.records) != n:  # a benchmark that lost records measures nothing
        raise SystemExit(f"decoded {len(decoded.records)} / read {len(batch.records)} of {n} records")
    shutil.rmtree(root)
    return {
        "append_ns": append_s / n * 1e9,
        "flush_records_per_s": n / flush_s,
        "decode_records_per_s": n / decode_s,
        "read_records_per_s": n / read_s,
        "raw_read_mb_per_s": nbytes / raw_s / 1e6,
        "raw_read_records_per_s": n / raw_s,
        "bytes_per_record": nbytes / n,
    }


def _pread_all(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.journal", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--records", type=int, default=200_000, help="records per run (default 200000)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions; medians are reported (default 5)")
    parser.add_argument("--dir", default=None, help="where segments are written (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    records = make_records(args.records)
    base = Path(tempfile.mkdtemp(prefix="kvfs-bench-journal-", dir=args.dir))
    try:
        runs = [run_once(base, records) for _ in range(args.runs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["read_vs_target"] = med["read_records_per_s"] / TARGET_RECORDS_PER_S
    if args.json:
        print(json.dumps(med, sort_keys=True))
        return 0
    print(f"{args.records} records ({med['bytes_per_record']:.0f} B each), medians of {args.runs} runs")
    print(f"  append (enqueue)       {med['append_ns']:10.0f} ns/record")
    print(f"  flush (encode+write)   {med['flush_records_per_s']:10,.0f} records/s")
    print(f"  decode (in memory)     {med['decode_records_per_s']:10,.0f} records/s")
    print(
        f"  read (files -> records){med['read_records_per_s']:10,.0f} records/s"
        f"   {med['read_vs_target']:.1f}x the evictor's 100k/s ingest target"
    )
    print(
        f"  raw pread (limit)      {med['raw_read_records_per_s']:10,.0f} records/s"
        f"   ({med['raw_read_mb_per_s']:,.0f} MB/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
