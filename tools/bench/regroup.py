"""What `adaptive`'s journal listener costs the ingesting process: records regrouped into requests and fed to
the shadows, per second.

    python -m tools.bench.regroup [--records 200000] [--tier-blocks 1000000,20000] [--interleave 1,8] [--runs 3]

Requests of random chains (a head shared with earlier requests, then new blocks), journaled as a connector does:
the hits as ACCESS and the rest as STORE records, every record at its request's time, with chain positions;
`--interleave N` journals every N requests' records in turn (a batch of concurrent requests).  The listener is
`AdaptivePolicy`'s own (`kvfs.policy.regroup.Regrouper` feeding `kvfs.replay.chooser.Shadows`) with the shadows
sized for `--tier-blocks` (their sample rate `kvfs.policy.chooser.SHADOW_BLOCKS` / blocks); the baseline in
the same run is the regrouping alone (a sink that drops each request), both with the cyclic GC paused as ingest
pauses it, and decoding the same records from the journal is in `python -m tools.bench.evictor --only ingest`.
Medians of `--runs`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

from kvfs.gcpause import cyclic_gc_paused
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy.regroup import Regrouper
from kvfs.replay.chooser import Shadows
from tools.bench.engine_records import interleaved

NS = "org_model_0123456789ab"


def records_of(count: int, seed: int) -> list[JournalRecord]:
    """About `count` records: requests of 4-40 blocks whose first 0-20 blocks repeat one of 200 earlier heads."""
    rng = random.Random(seed)
    heads: list[list[int]] = []
    out: list[JournalRecord] = []
    next_block, t = 1, 0.0
    while len(out) < count:
        t += 1.0
        head = list(rng.choice(heads)) if heads and rng.random() < 0.7 else []
        head = head[: rng.randint(0, len(head))]
        new = list(range(next_block, next_block + rng.randint(4, 40)))
        next_block += len(new)
        chain = head + new
        heads.append(chain[:20])
        del heads[:-200]
        for pos, block in enumerate(chain):
            key = BlockKey(NS, None, 0, f"{block:016x}" * 2, "kvfs")
            if pos < len(head):
                out.append(JournalRecord(RecordKind.ACCESS, key, t, 0, pos))
            else:
                parent = f"{chain[pos - 1]:016x}" * 2 if pos else None
                out.append(JournalRecord(RecordKind.STORE, key, t, 1, pos, parent))
    return out


def rate(records: Sequence[JournalRecord], sink: Callable[[list[int]], None], batch: int = 5000) -> float:
    """Records per second through a Regrouper feeding `sink`, `batch` records an apply, flushed at the end."""
    grouper = Regrouper(sink)
    with cyclic_gc_paused():  # as the evictor's ingest runs its listeners
        started = time.perf_counter()
        for first in range(0, len(records), batch):
            grouper.add(records[first : first + batch])
        grouper.flush()
        return len(records) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--tier-blocks", default="1000000,20000")
    p.add_argument("--interleave", default="1,8")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    for width in (int(w) for w in args.interleave.split(",")):
        records = interleaved(records_of(args.records, seed=7), width)
        alone = statistics.median(rate(records, lambda _req: None) for _ in range(args.runs))
        print(
            f"{len(records):,} records, {width} requests interleaved: regrouping alone {alone:,.0f} records/s"
        )
        for blocks in (int(b) for b in args.tier_blocks.split(",")):
            rates = []
            for _ in range(args.runs):
                shadows = Shadows()
                shadows.size(blocks)
                rates.append(rate(records, shadows.feed))
            fed = statistics.median(rates)
            print(
                f"  with the shadows of a {blocks:,}-block tier: {fed:,.0f} records/s ({fed / alone:.2f}x alone)"
            )


if __name__ == "__main__":
    main()
