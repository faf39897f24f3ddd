"""Journal: record encoding round trips, resync over corruption, reader offsets/tails/finish, writer behaviour."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from kvfs.journal import (
    END_RECORD,
    MAX_RECORD_SIZE,
    MIN_RECORD_TIME,
    SYNC,
    JournalReader,
    JournalRecord,
    JournalWriter,
    RecordKind,
    decode_records,
    default_writer_id,
    encode_record,
    sanitize_writer_id,
    segment_name,
)
from kvfs.layout import BlockKey, journal_dir

HEX = "0123456789abcdef"
keys = st.builds(
    BlockKey,
    # Names a namespace directory can have (kvfs.layout.is_namespace_name): `<model>_<digest12>`.
    namespace=st.builds(
        lambda model, digest: f"{model}_{digest}",
        st.text(
            alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
            min_size=1,
            max_size=40,
        ),
        st.text(alphabet=HEX, min_size=12, max_size=12),
    ),
    rank=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    group=st.integers(min_value=0, max_value=2**31 - 1),
    block_hash=st.text(alphabet=HEX, min_size=16, max_size=128),
    fmt=st.sampled_from(["kvfs", "bin"]),
)
records = st.builds(
    JournalRecord,
    kind=st.sampled_from(list(RecordKind)),
    key=keys,
    # The ranges decode_records accepts (tests/faults/test_fault_journal.py covers the rest).
    time=st.floats(min_value=MIN_RECORD_TIME, max_value=1_750_000_000.0),
    size=st.integers(min_value=0, max_value=MAX_RECORD_SIZE),
    chain_pos=st.integers(min_value=-1, max_value=2**31 - 1),
    parent=st.none() | st.text(alphabet=HEX, min_size=8, max_size=64).map(lambda s: s + s),
)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def key(i: int, ns: str = "org_m_0123456789ab") -> BlockKey:
    return BlockKey(ns, i % 4 or None, i % 3, f"{i:064x}", "kvfs")


def rec(i: int) -> JournalRecord:
    return JournalRecord(RecordKind.STORE if i % 2 else RecordKind.ACCESS, key(i), 1_700_000_000.0 + i, i, i)


def write_segment(root: Path, name: str, data: bytes, *, age: float = 0.0) -> Path:
    directory = journal_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


SEG = segment_name("w1", 0)


# --- encoding --------------------------------------------------------------------------------------------------


@given(st.lists(records, max_size=30))
@settings(max_examples=150, deadline=None)
def test_encode_decode_round_trip(recs: list[JournalRecord]) -> None:
    data = b"".join(encode_record(r) for r in recs) + END_RECORD
    decoded = decode_records(data, final=False)
    assert decoded.records == recs
    assert (decoded.end, decoded.bad, decoded.torn, decoded.closed) == (len(data), 0, 0, True)


@given(
    st.lists(records, min_size=1, max_size=25),
    st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(["flip", "garbage", "delete"])), max_size=4),
    st.binary(min_size=1, max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_decoder_resyncs_over_corruption(recs: list[JournalRecord], damage: list, garbage: bytes) -> None:
    frames = [bytearray(encode_record(r)) for r in recs]
    touched: set[int] = set()
    inserts: dict[int, bytes] = {}
    for where, how in damage:
        i = where % len(frames)
        if how == "flip":
            pos = (where // len(frames)) % len(frames[i])
            frames[i][pos] ^= 1 << (where % 8)
            touched.add(i)
        elif how == "delete":
            pos = (where // len(frames)) % len(frames[i])
            del frames[i][pos]
            touched.add(i)
        else:
            inserts[i] = garbage  # garbage in front of record i
    data = b"".join(inserts.get(i, b"") + bytes(f) for i, f in enumerate(frames))
    decoded = decode_records(data, final=True)
    intact = [r for i, r in enumerate(recs) if i not in touched]
    # Every untouched record is recovered, in order; nothing is invented (CRC32 collisions aside).
    it = iter(decoded.records)
    assert all(any(r == d for d in it) for r in intact)
    assert all(d in recs for d in decoded.records)
    assert decoded.end == len(data)
    damaged = len(touched) + len(inserts)
    assert decoded.bad + decoded.torn <= damaged
    if len(decoded.records) < len(recs):
        assert decoded.bad + decoded.torn >= 1


def test_parent_is_optional_and_old_records_read_as_before() -> None:
    parent = "ab" * 16
    with_parent = JournalRecord(RecordKind.STORE, key(1), 1_700_000_000.0, 10, 3, parent)
    plain = JournalRecord(RecordKind.STORE, key(1), 1_700_000_000.0, 10, 3)
    data = encode_record(with_parent) + encode_record(plain)
    assert decode_records(data, final=True).records == [with_parent, plain]
    # A record without a parent is byte for byte what writers before the parent field wrote.
    assert len(encode_record(with_parent)) == len(encode_record(plain)) + 1 + 16
    assert encode_record(plain)[9] & 0x40 == 0
    # A parent that cannot be a block hash (odd length) is not journaled; the record still is.
    odd = JournalRecord(RecordKind.STORE, key(1), 1_700_000_000.0, 10, 3, "abc")
    assert decode_records(encode_record(odd), final=True).records == [plain]


@given(records, st.integers(min_value=0, max_value=MAX_RECORD_SIZE))
@settings(max_examples=50, deadline=None)
def test_with_size_keeps_every_other_field(rec: JournalRecord, size: int) -> None:
    """What ingest stores for a corrected size: the record with `size` replaced, as dataclasses.replace does,
    whatever fields a record has (the list comes from dataclasses.fields)."""
    assert rec.with_size(size) == dataclasses.replace(rec, size=size)
    assert rec.with_size(rec.size) == rec and rec.with_size(size) is not rec
    for f in dataclasses.fields(JournalRecord):
        if f.name != "size":
            assert getattr(rec.with_size(size), f.name) is getattr(rec, f.name)


def test_unencodable_keys() -> None:
    with pytest.raises(ValueError):
        encode_record(JournalRecord(RecordKind.STORE, key(1, ns="n" * 300), 0.0))
    with pytest.raises(KeyError):
        encode_record(JournalRecord(RecordKind.STORE, BlockKey("ns", 0, 0, "ab" * 8, "zip"), 0.0))  # type: ignore[arg-type]


def test_live_tail_is_waited_for_and_final_tail_counted() -> None:
    data = b"".join(encode_record(rec(i)) for i in range(3))
    cut = data[:-7]
    live = decode_records(cut, final=False)
    assert (len(live.records), live.bad, live.torn) == (2, 0, 0)
    assert live.end == len(encode_record(rec(0))) + len(encode_record(rec(1)))
    final = decode_records(cut, final=True)
    assert (len(final.records), final.bad, final.torn, final.end) == (2, 0, 1, len(cut))
    assert decode_records(data[:5], final=False).end == 0
    assert decode_records(data, final=False, max_records=2).end == live.end


# --- reader ----------------------------------------------------------------------------------------------------


def test_reader_is_idempotent_and_chunks_agree(tmp_path: Path) -> None:
    data = b"".join(encode_record(rec(i)) for i in range(50))
    write_segment(tmp_path, segment_name("a", 0), data + END_RECORD)
    write_segment(tmp_path, segment_name("b", 0), data)
    reader = JournalReader(tmp_path)
    full = reader.read({})
    assert len(full.records) == 100 and full.bad_records == 0
    assert full.finished == [segment_name("a", 0)]
    assert reader.read({}).records == full.records  # same offsets, same answer
    again = reader.read(full.offsets)
    assert again.records == [] and again.finished == [segment_name("a", 0)]  # closed, still not removed
    chunked: list[JournalRecord] = []
    offsets: dict[str, int] = {}
    for _ in range(100):
        batch = reader.read(offsets, max_records=7)
        assert len(batch.records) <= 7
        chunked.extend(batch.records)
        offsets.update(batch.offsets)
        if not batch.records:
            break
    assert chunked == full.records and offsets == full.offsets
    assert reader.backlog_bytes({}) == 2 * len(data) + len(END_RECORD)
    assert reader.backlog_bytes(full.offsets) == 0


def test_live_torn_tail_is_not_consumed_until_completed(tmp_path: Path) -> None:
    whole = b"".join(encode_record(rec(i)) for i in range(10))
    last = encode_record(rec(10))
    path = write_segment(tmp_path, SEG, whole + last[:9])
    reader = JournalReader(tmp_path, abandon_after=300)
    before = counter("kvfs_journal_bad_records_total", reason="torn_tail")
    batch = reader.read({})
    assert len(batch.records) == 10 and batch.bad_records == 0 and batch.finished == []
    assert batch.offsets[SEG] == len(whole)
    with open(path, "ab") as fh:  # the writer completes its record
        fh.write(last[9:] + END_RECORD)
    rest = reader.read(batch.offsets)
    assert rest.records == [rec(10)] and rest.finished == [SEG] and rest.bad_records == 0
    assert counter("kvfs_journal_bad_records_total", reason="torn_tail") == before


def test_truncated_segment_of_dead_writer_is_skipped_and_counted(tmp_path: Path) -> None:
    whole = b"".join(encode_record(rec(i)) for i in range(10))
    data = whole + encode_record(rec(10))[:-3]
    write_segment(tmp_path, SEG, data, age=10)
    before = counter("kvfs_journal_bad_records_total", reason="torn_tail")
    live_view = JournalReader(tmp_path, abandon_after=300).read({})
    assert len(live_view.records) == 10 and live_view.finished == [] and live_view.bad_records == 0
    batch = JournalReader(tmp_path, abandon_after=5).read(live_view.offsets)
    assert batch.records == [] and batch.bad_records == 1 and batch.finished == [SEG]
    assert batch.offsets[SEG] == len(data)
    assert counter("kvfs_journal_bad_records_total", reason="torn_tail") == before + 1
    # Counted once: reading again from the new offsets finds nothing more to skip.
    assert JournalReader(tmp_path, abandon_after=5).read(batch.offsets).bad_records == 0


def test_garbage_inside_a_live_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    a = b"".join(encode_record(rec(i)) for i in range(5))
    b = b"".join(encode_record(rec(i)) for i in range(5, 9))
    write_segment(tmp_path, SEG, a + b"\x00garbage\xff" * 3 + SYNC + b"\x01" + b)
    before = counter("kvfs_journal_bad_records_total", reason="corrupt")
    batch = JournalReader(tmp_path).read({})
    assert batch.records == [rec(i) for i in range(9)]
    assert batch.bad_records == 1  # one run of garbage (with a false sync marker inside) counts once
    assert counter("kvfs_journal_bad_records_total", reason="corrupt") == before + 1


def test_trailing_garbage_waits_while_live_then_counts_when_abandoned(tmp_path: Path) -> None:
    a = b"".join(encode_record(rec(i)) for i in range(3))
    path = write_segment(tmp_path, SEG, a + b"\x00" * 50)
    live = JournalReader(tmp_path).read({})
    assert len(live.records) == 3 and live.offsets[SEG] == len(a) and live.bad_records == 0
    old = time.time() - 1000
    os.utime(path, (old, old))
    dead = JournalReader(tmp_path, abandon_after=60).read(live.offsets)
    assert dead.bad_records == 1 and dead.finished == [SEG] and dead.offsets[SEG] == len(a) + 50


def test_bytes_after_end_record_are_consumed(tmp_path: Path) -> None:
    write_segment(tmp_path, SEG, encode_record(rec(1)) + END_RECORD + b"junk")
    batch = JournalReader(tmp_path).read({})
    assert batch.records == [rec(1)] and batch.finished == [SEG] and batch.bad_records == 1


def test_empty_abandoned_segment_is_finished(tmp_path: Path) -> None:
    write_segment(tmp_path, SEG, b"", age=1000)
    write_segment(tmp_path, segment_name("live", 0), b"")
    batch = JournalReader(tmp_path, abandon_after=300).read({})
    assert batch.finished == [SEG] and batch.bad_records == 0


def test_remove_only_segment_names(tmp_path: Path) -> None:
    write_segment(tmp_path, SEG, END_RECORD)
    (journal_dir(tmp_path) / "notes.txt").write_text("keep me")
    outside = tmp_path / "outside.jnl"
    outside.write_text("keep me")
    reader = JournalReader(tmp_path)
    assert reader.remove(["../outside.jnl", "notes.txt", "/etc/passwd", SEG, SEG]) == 1
    assert outside.exists() and (journal_dir(tmp_path) / "notes.txt").exists()
    assert reader.segments() == []
    assert JournalReader(tmp_path / "nothing-here").read({}).records == []


# --- writer ----------------------------------------------------------------------------------------------------


def test_background_flush_without_explicit_flush(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, writer_id="bg", flush_interval=0.05)
    try:
        for i in range(100):
            writer.record_store(key(i), size=i, chain_pos=i, now=float(i))
        writer.record_access(key(1), now=5.0)
        deadline = time.monotonic() + 5
        batch = JournalReader(tmp_path).read({})
        while len(batch.records) < 101 and time.monotonic() < deadline:
            time.sleep(0.05)
            batch = JournalReader(tmp_path).read({})
        assert len(batch.records) == 101
        assert batch.records[7] == JournalRecord(RecordKind.STORE, key(7), 7.0, 7, 7)
        assert batch.records[-1] == JournalRecord(RecordKind.ACCESS, key(1), 5.0, 0, -1)
        assert batch.finished == []  # still open
    finally:
        writer.close()
    closed = JournalReader(tmp_path).read({})
    assert len(closed.records) == 101 and closed.finished == [segment_name("bg", 0)]
    path = journal_dir(tmp_path) / segment_name("bg", 0)
    assert path.read_bytes().endswith(END_RECORD)
    assert path.stat().st_mode & 0o777 == 0o660


def test_rotation_by_size_and_by_age(tmp_path: Path) -> None:
    with JournalWriter(tmp_path, writer_id="rot", flush_interval=1.0, max_segment_bytes=1000) as writer:
        for i in range(40):
            writer.append(rec(i))
            if i % 5 == 4:
                writer.flush()
        names = [n for n, _ in JournalReader(tmp_path).segments()]
        assert len(names) >= 3  # ~90-byte records: a 1000-byte segment rotates every 15
        for name in names[:-1]:
            assert (journal_dir(tmp_path) / name).read_bytes().endswith(END_RECORD)
    batch = JournalReader(tmp_path).read({})
    assert batch.records == [rec(i) for i in range(40)] and set(batch.finished) == set(names)

    with JournalWriter(tmp_path / "age", writer_id="age", flush_interval=0.05, max_segment_age=0.2) as writer:
        writer.append(rec(1))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if JournalReader(tmp_path / "age").read({}).finished and writer.current_segment is None:
                break
            time.sleep(0.05)
        batch = JournalReader(tmp_path / "age").read({})
        assert batch.records == [rec(1)] and batch.finished == [segment_name("age", 0)]
        assert writer.current_segment is None  # closed by age although nothing new came


def test_append_never_raises_and_drops_are_counted(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, writer_id="full", flush_interval=1.0, max_pending=10)
    before_full = counter("kvfs_journal_records_dropped_total", reason="buffer_full")
    before_bad = counter("kvfs_journal_records_dropped_total", reason="unencodable")
    for i in range(25):
        writer.append(rec(i))
    assert writer.pending <= 10
    assert counter("kvfs_journal_records_dropped_total", reason="buffer_full") >= before_full + 15
    writer.flush()
    writer.append(JournalRecord(RecordKind.STORE, key(1, ns="n" * 300), 0.0))
    writer.append(rec(99))
    writer.flush()
    assert counter("kvfs_journal_records_dropped_total", reason="unencodable") == before_bad + 1
    writer.close()
    before_closed = counter("kvfs_journal_records_dropped_total", reason="closed")
    writer.append(rec(100))
    assert counter("kvfs_journal_records_dropped_total", reason="closed") == before_closed + 1
    writer.close()  # idempotent
    got = JournalReader(tmp_path).read({}).records
    assert got[-1] == rec(99) and len(got) == 11


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / ".kvfs").write_text("a file where the journal directory should be")
    before = counter("kvfs_journal_write_errors_total")
    dropped = counter("kvfs_journal_records_dropped_total", reason="write_error")
    writer = JournalWriter(tmp_path, flush_interval=1.0)
    for i in range(5):
        writer.append(rec(i))
    writer.flush()
    writer.close()
    assert counter("kvfs_journal_write_errors_total") == before + 1
    assert counter("kvfs_journal_records_dropped_total", reason="write_error") == dropped + 5


def test_writer_ids(tmp_path: Path) -> None:
    assert sanitize_writer_id("pod.ns/1 x") == "pod_ns_1_x"
    wid = default_writer_id()
    assert wid.count("-") >= 2 and str(os.getpid()) in wid
    with pytest.raises(ValueError):
        JournalWriter(tmp_path, flush_interval=2.0)
    # A restarted writer with the same id never appends to an older segment.
    for _ in range(2):
        with JournalWriter(tmp_path, writer_id="same") as writer:
            writer.append(rec(1))
    assert [n for n, _ in JournalReader(tmp_path).segments()] == [
        segment_name("same", 0),
        segment_name("same", 1),
    ]
