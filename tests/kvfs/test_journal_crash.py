"""A SIGKILLed journal writer: its segments are consumed completely, a torn tail is skipped and counted once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from prometheus_client import REGISTRY

from kvfs.journal import END_RECORD, JournalReader
from kvfs.layout import journal_dir

WRITER = textwrap.dedent(
    """
    import sys, time
    from kvfs.journal import JournalWriter
    from kvfs.layout import BlockKey
    root, round_no = sys.argv[1], int(sys.argv[2])
    writer = JournalWriter(root, flush_interval=0.02, max_segment_bytes=int(sys.argv[3]), fsync=False)
    key = BlockKey("org_model_0123456789ab", 0, 0, "ab" * 32, "kvfs")
    i = 0
    ready = False
    while True:
        # size carries the sequence number so the test can check nothing is lost or duplicated
        writer.record_store(key, size=i, chain_pos=round_no, now=1.0)
        i += 1
        # Ready once 20,000 records are appended and the flusher has opened a segment: it encodes its whole
        # queue first, 60-150 ms behind this loop (more the faster records are built), and a kill before that
        # leaves no segment at all.
        if not ready and i >= 20_000 and writer.current_segment is not None:
            ready = True
            print("ready", flush=True)
        if i % 1000 == 0 and writer.pending > 200_000:
            time.sleep(0.001)
    """
)


def torn_tails() -> float:
    return REGISTRY.get_sample_value("kvfs_journal_bad_records_total", {"reason": "torn_tail"}) or 0.0


def test_sigkilled_writer_segments_are_fully_consumed(tmp_path: Path) -> None:
    rng = random.Random(99)
    rounds = 3
    for round_no in range(rounds):
        # Small segments in one round (kills land around rotations), large ones in the others (unclosed tails).
        seg_bytes = 1 << 20 if round_no == 0 else 64 << 20
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(round_no), str(seg_bytes)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    segments = sorted(p.name for p in journal_dir(tmp_path).iterdir())
    assert len(segments) >= rounds

    # Make one tail torn for certain: cut an unclosed segment of a killed writer mid-record.
    unclosed = [n for n in segments if not (journal_dir(tmp_path) / n).read_bytes().endswith(END_RECORD)]
    # A writer killed right after opening a segment leaves it empty: cut the longest one instead.
    unclosed.sort(key=lambda n: (journal_dir(tmp_path) / n).stat().st_size, reverse=True)
    assert unclosed and (journal_dir(tmp_path) / unclosed[0]).stat().st_size > 64
    cut = journal_dir(tmp_path) / unclosed[0]
    os.truncate(cut, cut.stat().st_size - 5)

    # While the writers count as alive, no incomplete tail is consumed.
    live = JournalReader(tmp_path, abandon_after=3600).read({})
    assert live.bad_records == 0
    assert live.offsets[unclosed[0]] < cut.stat().st_size
    before = torn_tails()
    reader = JournalReader(tmp_path, abandon_after=0.0)  # dead writers: every segment is abandoned or closed
    batch = reader.read(live.offsets)
    records = live.records + batch.records

    # Per writer (chain_pos = round): a gap-free, duplicate-free prefix of what it appended.
    for round_no in range(rounds):
        seq = [r.size for r in records if r.chain_pos == round_no]
        assert len(seq) > 0
        assert seq == list(range(len(seq)))
    assert sorted(batch.finished) == segments  # everything consumed and finished
    for name in segments:
        assert batch.offsets[name] == (journal_dir(tmp_path) / name).stat().st_size
    # Torn tails: the truncated one for certain, plus any a kill cut mid-write; each counted exactly once.
    assert 1 <= batch.bad_records <= rounds
    assert torn_tails() - before == batch.bad_records
    again = reader.read({**live.offsets, **batch.offsets})
    assert again.records == [] and again.bad_records == 0
    assert reader.remove(batch.finished) == len(segments)
