"""What the catalog makes of an engine's journal: a trace replayed through the real catalog and policy, with a
request's records as a real engine once wrote them, beside the in-memory replay of the same sequence.

    python -m tools.bench.engine_records [--trace sysprompt:150] [--policy adaptive] [--modes request,per-file,watcher-first]

The replays in docs/policy.md give a request's records one time and make a store's row from its STORE record.
The engine's side did neither (issue 22 item 5: `adaptive` in a real engine at 0.953x its replay on
`sysprompt`):

* `request`: every record of a request at the request's time, the tail first on the tie (the connector since
  `connector/chain.py` `request_time`); the catalog replay of `kvfs replay`, record for record.
* `per-file`: each store stamped when its file finished: parallel I/O threads finish a request's files in any
  order (a seeded shuffle, 1 ms apart), journaled in that order (the connector before).
* `--interleave N`: every N consecutive requests' records journaled in turn (a batch of concurrent requests;
  hits as served one after another), for the evictor's regrouping of records into requests.
* `watcher-first`: request stamps, but each new file's row made first by the tree watcher's upsert (the file's
  later mtime, the scan's queue place) before its STORE record is ingested (the evictor before `journal_grace`).

Requests as `tools.e2e`'s trace phase runs them: the trace's seed-1 workload, capacity a third of its unique
blocks, passes under the evictor's 85/70% watermarks after every request.  The baseline: the in-memory replay.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kvfs.catalog import BlockRow, Catalog
from kvfs.journal import JournalRecord, RecordKind
from kvfs.policy import get_policy
from kvfs.replay import simulate_policy
from kvfs.replay.catalog_replay import BLOCK_UNIT, CatalogTier
from kvfs.replay.sim import SimResult, leading_hits

MODES = ("request", "per-file", "watcher-first")


def interleaved(records: list[JournalRecord], width: int) -> list[JournalRecord]:
    """`records` (request by request, each at its request's index as time) with every `width` consecutive
    requests' records taken in turn, as a batch of concurrent requests journals them."""
    if width <= 1:
        return records
    requests: dict[int, list[JournalRecord]] = {}
    for r in records:
        requests.setdefault(int(r.time), []).append(r)
    groups = list(requests.values())
    out: list[JournalRecord] = []
    for first in range(0, len(groups), width):
        batch = [list(reversed(g)) for g in groups[first : first + width]]
        while any(batch):
            out.extend(g.pop() for g in batch if g)
    return out


def replay(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int,
    policy: str,
    mode: str,
    seed: int = 0,
    interleave: int = 1,
) -> SimResult:
    """Hits of `policy` on the catalog, fed each request's records as `mode` says (see the module), every
    `interleave` requests' records interleaved in the journal."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    rng = random.Random(seed)
    result = SimResult()
    with tempfile.TemporaryDirectory(prefix="kvfs-engine-records-") as tmp:
        catalog = Catalog.open(f"sqlite:///{Path(tmp) / 'catalog.db'}")
        try:
            tier = CatalogTier(
                catalog, capacity, slack, get_policy(policy), order=lambda p: interleaved(p, interleave)
            )
            for i, req in enumerate(requests):
                now = float(i + 1)
                result.count(leading_hits(req, tier.present), len(req))
                records = tier.records(req, now)
                if mode == "request":
                    tier.journal(records)  # as the catalog replay journals them
                    result.evicted += tier.evict(now)
                    continue
                # Hits at lookup, stores after the forward pass.
                stores = [r for r in records if r.kind is RecordKind.STORE]
                if mode == "per-file":
                    rng.shuffle(stores)  # finishing order; each stamped when it finished
                    stores = [
                        JournalRecord(r.kind, r.key, now + 0.001 * (k + 1), r.size, r.chain_pos, r.parent)
                        for k, r in enumerate(stores)
                    ]
                elif stores:  # watcher-first
                    tier.ingest()  # what was journaled before; this request's records are still in its writer
                    mtime = now + 0.5
                    catalog.upsert_blocks([BlockRow(r.key, BLOCK_UNIT, mtime, mtime) for r in stores])
                tier.journal([r for r in records if r.kind is not RecordKind.STORE])
                tier.journal(stores)
                result.evicted += tier.evict(now)
        finally:
            catalog.close()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    from tools.e2e.engine import watermark_blocks
    from tools.e2e.trace import parse_trace, trace_requests

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default="sysprompt:150", help="WORKLOAD:REQUESTS of tools.tracegen")
    p.add_argument("--seed", type=int, default=1, help="the trace's seed (tools.e2e's default)")
    p.add_argument("--fraction", type=float, default=1 / 3, help="capacity / the trace's unique blocks")
    p.add_argument("--policy", default="adaptive")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument(
        "--draws", type=int, default=5, help="finishing orders drawn for `per-file` (median, range)"
    )
    p.add_argument(
        "--interleave", type=int, default=1, help="journal every N requests' records interleaved (a batch)"
    )
    args = p.parse_args(argv)
    workload, count = parse_trace(args.trace)
    requests = trace_requests(workload, count, args.seed)
    capacity = max(1, int(len({b for r in requests for b in r}) * args.fraction))
    high, low = watermark_blocks(capacity)
    slack = max(1, high - low)
    base = simulate_policy(requests, high, slack, args.policy).hit_ratio
    print(
        f"{args.trace} seed {args.seed}, {capacity} blocks (85/70%), `{args.policy}`; in-memory replay {base:.4f}"
    )
    for mode in args.modes.split(","):
        started = time.perf_counter()
        draws = range(args.draws if mode == "per-file" else 1)
        got = sorted(
            replay(requests, high, slack, args.policy, mode, seed, args.interleave).hit_ratio
            for seed in draws
        )
        took = (time.perf_counter() - started) / len(got)
        median = statistics.median(got)
        spread = f", {len(got)} draws {got[0]:.4f}-{got[-1]:.4f}" if len(got) > 1 else ""
        print(
            f"  {mode:14s} {median:.4f}  ({median / base if base else 0:.3f}x the in-memory replay{spread}; "
            f"{took:.1f} s a replay)"
        )


if __name__ == "__main__":
    main()
