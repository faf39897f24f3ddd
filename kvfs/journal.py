"""Per-writer append-only access journal: what was stored and read, for the evictor's catalog.

Every writer process owns its segment files `<root>/.kvfs/journal/<writer-id>.<seq:08d>.jnl`; nobody else ever
writes them, so no locking is needed on the shared mount.  A segment is a sequence of records:

    sync   2  b"\\xa7\\x1e"   lets a reader find the next record after garbage
    length 2  body length   (u16, little-endian)
    crc    4  zlib.crc32 of the body
    body      kind u8 | fmt u8 | rank i32 (-1 = none) | group u32 | chain_pos i32 | size u64 | time f64
              | namespace length u8 | hash length u8 | namespace utf-8 | hash (raw bytes, or ASCII hex when odd)
              [| parent length u8 | parent hash (raw bytes)]   only when the fmt byte has flag 0x40

A closed segment ends with an END record (kind 0x7f, the rest of the fixed body zero).  `JournalWriter.append` only enqueues (no lock, no I/O);
a daemon thread encodes and writes the queue at least every `flush_interval` seconds, then fsyncs (so readers
on NFS-like mounts see whole records), and rotates segments by size and age.

`JournalReader` is idempotent given per-segment byte offsets (kept by the caller, e.g. in the catalog, in the
same transaction that applies the records).  It skips and counts malformed bytes, never consumes the incomplete
tail of a live writer, and reports segments that are closed (or abandoned by a dead writer) and fully consumed,
which the caller removes only AFTER committing the offsets.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import secrets
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from enum import IntEnum
from operator import attrgetter
from pathlib import Path
from typing import Final

from kvfs import metrics
from kvfs.layout import BlockKey, dir_mode_for, is_namespace_name, journal_dir, makedirs_exact

log = logging.getLogger(__name__)

SYNC: Final = b"\xa7\x1e"
_FRAME = struct.Struct("<2sHI")  # sync, body length, crc32
_BODY = struct.Struct("<BBiIiQdBB")  # kind, fmt|flags, rank, group, chain_pos, size, time, ns len, hash len
_MAX_BODY: Final = _BODY.size + 255 + 255 + 256  # + the optional parent
_MAX_FRAME: Final = 8 + _MAX_BODY  # the longest record, frame included
_KIND_END: Final = 0x7F
_HASH_ASCII: Final = 0x80  # fmt-byte flag: the hash is stored as ASCII hex (odd length)
# fmt-byte flag: a STORE record carries its block's parent in the prefix chain (raw bytes of an even-length hex
# hash).  Segments without it read as before; readers older than this flag skip such records as malformed.
_HAS_PARENT: Final = 0x40
_FMT_MASK: Final = 0x3F
_FMT_CODES: Final = {"kvfs": 0, "bin": 1}
_FMT_NAMES: Final = ("kvfs", "bin")
_END_BODY: Final = bytes([_KIND_END]) + bytes(_BODY.size - 1)  # a full fixed body: every record has one
END_RECORD: Final = _FRAME.pack(SYNC, len(_END_BODY), zlib.crc32(_END_BODY)) + _END_BODY
_HEAD = struct.Struct("<2sHI" + _BODY.format[1:])  # frame + fixed body, decoded in one call
_HEAD_SIZE: Final = _HEAD.size
SEGMENT_SUFFIX: Final = ".jnl"
SEGMENT_RE: Final = re.compile(r"^(?P<writer>[A-Za-z0-9_-]+)\.(?P<seq>\d{8,})\.jnl$")
_MAX_READ_PER_SEGMENT: Final = 64 << 20
# Validation of checksum-valid records (one place: decode time).  A record outside these ranges is a writer's
# bug, not a block: it is consumed, counted (kvfs_journal_bad_records_total{reason="invalid"}) and skipped, so
# one absurd value can neither overflow a catalog column nor stall ingest at its offset.
MAX_RECORD_SIZE: Final = 1 << 40  # 1 TiB: far above any KV block, far below int64 sums over a tree
MIN_RECORD_TIME: Final = 0.0  # before the epoch: garbage (an early time is merely old, so it is accepted)
_MAX_GROUP: Final = (1 << 31) - 1  # an INTEGER column on PostgreSQL
_MIN_HASH_LEN: Final = 16
_MAX_HASH_LEN: Final = 128  # the catalog's block_hash column, and the layout's hash pattern
# A writer's clock may run ahead of the reader's.  Records dated in the future are clamped to the reader's
# clock (else a fast writer's blocks would look recent for as long as it is ahead, and never be evicted);
# beyond this allowance the clamp is also counted, as a sign of a skewed clock.
CLOCK_SKEW_ALLOWANCE_S: Final = 60.0
# Per writer, while no evictor consumes its segments (JournalWriter): ~3M access records of ~87 bytes.
DEFAULT_MAX_JOURNAL_BYTES: Final = 256 << 20


class RecordKind(IntEnum):
    STORE = 1
    ACCESS = 2


# Not frozen: a frozen dataclass's __init__ costs 4x more (0.7 against 0.17 us), and the reader builds one per
# record (a fifth of ingest's decoding).  Nothing changes a record after it is built: a corrected one is a new
# record (`with_size`).
@dataclass(slots=True)
class JournalRecord:
    kind: RecordKind
    key: BlockKey
    time: float
    size: int = 0
    chain_pos: int = -1
    parent: str | None = (
        None  # STORE: the previous block's hash in the prefix chain, where the writer knows it
    )

    def with_size(self, size: int) -> JournalRecord:
        """This record with `size` replaced, every other field kept (whatever fields a record grows): ingest
        corrects the size of each STORE whose file is missing or smaller, and `dataclasses.replace` costs
        2.5 times as much."""
        fields = list(_RECORD_FIELDS(self))
        fields[_SIZE_FIELD] = size
        return JournalRecord(*fields)


# Every field of a JournalRecord in declaration order (one C call), and where `size` is among them.
_RECORD_FIELDS: Final = attrgetter(*(f.name for f in dataclass_fields(JournalRecord)))
_SIZE_FIELD: Final = [f.name for f in dataclass_fields(JournalRecord)].index("size")


@dataclass(slots=True)
class JournalBatch:
    records: list[JournalRecord] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    bad_records: int = 0
    finished: list[str] = field(default_factory=list)


# --- encoding -------------------------------------------------------------------------------------------------


def encode_record(rec: JournalRecord) -> bytes:
    """One framed record.  Raises ValueError for keys that cannot be journaled (too long, bad hash)."""
    key = rec.key
    ns = key.namespace.encode("utf-8")
    block_hash = key.block_hash
    fmt = _FMT_CODES[key.fmt]
    if len(block_hash) % 2:
        hash_bytes = block_hash.encode("ascii")
        fmt |= _HASH_ASCII
    else:
        hash_bytes = bytes.fromhex(block_hash)
    if len(ns) > 255 or len(hash_bytes) > 255:
        raise ValueError(f"key too long to journal: {key}")
    parent = b""
    if rec.parent is not None and len(rec.parent) % 2 == 0:
        parent_bytes = bytes.fromhex(rec.parent)
        if len(parent_bytes) <= 255:
            parent = bytes([len(parent_bytes)]) + parent_bytes
            fmt |= _HAS_PARENT
    body = (
        _BODY.pack(
            int(rec.kind),
            fmt,
            -1 if key.rank is None else key.rank,
            key.group,
            rec.chain_pos,
            rec.size,
            rec.time,
            len(ns),
            len(hash_bytes),
        )
        + ns
        + hash_bytes
        + parent
    )
    return _FRAME.pack(SYNC, len(body), zlib.crc32(body)) + body


@dataclass(slots=True)
class _Decoded:
    records: list[JournalRecord]
    end: int  # offset (relative to the decoded buffer) up to which bytes are consumed
    bad: int
    torn: int
    closed: bool  # an END record was consumed
    invalid: int = 0  # checksum-valid records with out-of-range fields, consumed and skipped
    future: int = 0  # records dated more than CLOCK_SKEW_ALLOWANCE_S ahead of the reader, clamped to `now`


_RECORD_KINDS: Final = {1: RecordKind.STORE, 2: RecordKind.ACCESS}


def decode_records(
    data: bytes | memoryview, *, final: bool, max_records: int | None = None, now: float | None = None
) -> _Decoded:
    """Decode framed records from `data`.

    `final` says no more bytes will ever follow (closed or abandoned segment, and `data` reaches end of file):
    then an incomplete or unparseable tail is skipped and counted as torn; otherwise decoding stops before it,
    since a live writer may still be completing it.

    Records with a size outside [0, MAX_RECORD_SIZE], a time that is not finite or negative, a
    group beyond INTEGER range or a hash that is not 16-128 hex digits are consumed and counted as `invalid`.
    Times after `now` (default: the current time) are clamped to `now`.
    """
    now = time.time() if now is None else now
    future_cutoff = now + CLOCK_SKEW_ALLOWANCE_S
    if not isinstance(data, bytes):
        data = bytes(data)
    view = memoryview(data)
    n = len(data)
    records: list[JournalRecord] = []
    append = records.append
    find = data.find
    unpack_head = _HEAD.unpack_from
    head_size = _HEAD_SIZE
    body_size = _BODY.size
    max_body = _MAX_BODY
    crc32 = zlib.crc32
    kinds = _RECORD_KINDS
    fmt_names = _FMT_NAMES
    ns_cache: dict[bytes, str] = {}
    limit = max_records if max_records is not None else -1
    pos = 0
    bad = torn = invalid = future = 0
    garbage_start = -1  # start of the current run of undecodable bytes, counted once when the run ends
    closed = False
    while pos < n:
        if len(records) == limit:
            break
        if n - pos < head_size:
            if not final:
                break  # a record still arriving: wait for the writer
        else:
            sync, blen, crc, kind, fmt, rank, group, chain_pos, size, when, ns_len, hash_len = unpack_head(
                data, pos
            )
            end = pos + 8 + blen
            if sync == SYNC and body_size <= blen <= max_body:
                if end > n:
                    if not final:
                        break  # a live writer's record still being written (or garbage: decided later)
                elif crc32(view[pos + 8 : end]) == crc:
                    hash_end = pos + head_size + ns_len + hash_len
                    parent_len = -1
                    if fmt & _HAS_PARENT and hash_end < end:
                        parent_len = data[hash_end]
                    if (
                        kind in kinds
                        and (fmt & _FMT_MASK) < 2
                        and (
                            blen == body_size + ns_len + hash_len
                            if not fmt & _HAS_PARENT
                            else blen == body_size + ns_len + hash_len + 1 + parent_len
                        )
                    ):
                        a = pos + head_size
                        ns_raw = data[a : a + ns_len]
                        ns = ns_cache.get(ns_raw)
                        if ns is None:
                            # A name that is not UTF-8 or not a namespace directory's (NUL, `/`, no digest)
                            # becomes "": the record is consumed and counted invalid below.  PostgreSQL
                            # refuses NUL, and one such record used to fail every batch after it.
                            try:
                                ns = ns_raw.decode("utf-8")
                            except UnicodeDecodeError:
                                ns = ""
                            ns = ns_cache[ns_raw] = ns if is_namespace_name(ns) else ""
                        raw_hash = data[a + ns_len : hash_end]
                        block_hash = (
                            raw_hash.decode("ascii", "replace") if fmt & _HASH_ASCII else raw_hash.hex()
                        )
                        # `not (a <= x <= b)` is also true for NaN, so one test per field covers it.
                        if (
                            not (MIN_RECORD_TIME <= when < math.inf)
                            or size > MAX_RECORD_SIZE
                            or group > _MAX_GROUP
                            or not (_MIN_HASH_LEN <= len(block_hash) <= _MAX_HASH_LEN)
                            or (fmt & _HASH_ASCII and not _is_hex(block_hash))
                            or not ns
                        ):
                            invalid += 1
                        else:
                            if when > now:
                                if when > future_cutoff:
                                    future += 1
                                when = now
                            key = BlockKey(
                                ns,
                                None if rank < 0 else rank,
                                group,
                                block_hash,
                                fmt_names[fmt & _FMT_MASK],
                            )
                            # A parent outside the hash lengths is dropped: the record still counts.
                            parent = (
                                data[hash_end + 1 : end].hex()
                                if _MIN_HASH_LEN <= 2 * parent_len <= _MAX_HASH_LEN
                                else None
                            )
                            append(JournalRecord(kinds[kind], key, when, size, chain_pos, parent))
                        pos = end
                        if garbage_start >= 0:
                            bad += 1
                            garbage_start = -1
                        continue
                    elif kind == _KIND_END and blen == body_size:
                        closed = True
                        pos = end
                        if garbage_start >= 0:
                            bad += 1
                            garbage_start = -1
                        continue
        # Bad bytes at `pos`: skip to the next sync marker.
        if garbage_start < 0:
            garbage_start = pos
        nxt = find(SYNC, pos + 1)
        if nxt == -1:
            if not final:
                break  # may be a record still arriving; decide once the segment is closed or abandoned
            torn += 1
            garbage_start = -1
            pos = n
            break
        pos = nxt
    if garbage_start >= 0:  # stopped inside a run (live segment): leave it unconsumed and uncounted
        pos = garbage_start
    return _Decoded(records, pos, bad, torn, closed, invalid, future)


_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def _is_hex(text: str) -> bool:
    return _HEX_DIGITS.issuperset(text)


# --- writer ---------------------------------------------------------------------------------------------------


def default_writer_id() -> str:
    return sanitize_writer_id(f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


def sanitize_writer_id(writer_id: str) -> str:
    """Writer ids become file-name prefixes: keep `[A-Za-z0-9_-]`, replace the rest (dots included) by `_`."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", writer_id)
    if not clean:
        raise ValueError("writer_id must not be empty")
    return clean


def segment_name(writer_id: str, seq: int) -> str:
    return f"{writer_id}.{seq:08d}{SEGMENT_SUFFIX}"


# The longest a writer holds a record before writing it out: the evictor's tree watcher waits this long (and an
# ingest) before it makes a row for a kvfs file itself (evictor/watch.py).
MAX_FLUSH_INTERVAL = 1.0


class JournalWriter:
    """Buffered journal writer for one process; `append` never blocks and never raises.

    A daemon thread flushes at least every `flush_interval` seconds.  When more than `max_pending` records are
    queued (storage gone, thread starved) new records are dropped and counted rather than growing memory.

    Bound: segments are removed by the evictor once ingested, so they pile up only while no evictor runs.  After
    closing a segment, when this writer's segments on disk exceed `max_journal_bytes` (0: no bound), the
    oldest closed ones are compacted down to 3/4 of it: their store records are written to a new segment
    first, then the old ones are unlinked, so access records are dropped (oldest first; counted in
    `kvfs_journal_records_dropped_total{reason="journal_bound"}`) and store records never are.  A reader
    that had read part of a compacted segment reads its stores again from the new one (re-applying a store
    is harmless).  The bound therefore holds for access records; store records (one per block written, ~90
    bytes against the block's megabytes) are kept whatever their volume.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        writer_id: str | None = None,
        flush_interval: float = 0.5,
        max_segment_bytes: int = 8 << 20,
        max_segment_age: float = 60.0,
        file_mode: int = 0o660,
        max_pending: int = 1_000_000,
        fsync: bool = True,
        max_journal_bytes: int = DEFAULT_MAX_JOURNAL_BYTES,
    ) -> None:
        if not 0 < flush_interval <= MAX_FLUSH_INTERVAL:
            raise ValueError(f"flush_interval must be in (0, {MAX_FLUSH_INTERVAL:g}] seconds")
        self.root = Path(root)
        self.directory = journal_dir(root)
        self.writer_id = sanitize_writer_id(writer_id) if writer_id else default_writer_id()
        self.flush_interval = flush_interval
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age = max_segment_age
        self.file_mode = file_mode
        self.max_pending = max_pending
        self.fsync = fsync
        self.max_journal_bytes = max_journal_bytes
        # Segments holding only stores already: compacting them again frees nothing.
        self._compacted: set[str] = set()
        self._compacting = False
        self._queue: deque[JournalRecord] = deque()
        self._flush_lock = threading.Lock()
        self._fd = -1
        self._seq = -1
        self._segment_bytes = 0
        self._segment_opened = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._ns_cache: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self._run, name=f"kvfs-journal-{self.writer_id}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- producer side (any thread) --

    def append(self, rec: JournalRecord) -> None:
        try:
            if self._closed:
                metrics.JOURNAL_RECORDS_DROPPED.labels(reason="closed").inc()
            elif len(self._queue) >= self.max_pending:
                metrics.JOURNAL_RECORDS_DROPPED.labels(reason="buffer_full").inc()
            else:
                self._queue.append(rec)
        except Exception:  # noqa: BLE001 - append must never raise into the serving path
            log.exception("journal append failed")

    def record_store(
        self,
        key: BlockKey,
        size: int,
        chain_pos: int = -1,
        now: float | None = None,
        parent: str | None = None,
    ) -> None:
        self.append(
            JournalRecord(RecordKind.STORE, key, time.time() if now is None else now, size, chain_pos, parent)
        )

    def record_access(self, key: BlockKey, now: float | None = None, chain_pos: int = -1) -> None:
        """`chain_pos`, where the writer knows it, lets the evictor regroup a request's records (adaptive's
        shadows); the field was always in the record (-1: unknown)."""
        self.append(JournalRecord(RecordKind.ACCESS, key, time.time() if now is None else now, 0, chain_pos))

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def current_segment(self) -> str | None:
        return segment_name(self.writer_id, self._seq) if self._fd >= 0 else None

    # -- flushing --

    def flush(self) -> None:
        """Write everything queued so far (synchronously), rotating if the segment is full or old."""
        with self._flush_lock:
            self._flush_locked()

    def close(self) -> None:
        """Flush, end the current segment with an END record, stop the thread.  Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._flush_lock:
            self._flush_locked()
            self._closed = True
            self._close_segment()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must survive anything and keep counting
                log.exception("journal flush failed")

    def _flush_locked(self) -> None:
        started = time.perf_counter()
        queue = self._queue
        count = len(queue)
        if count:
            chunks = []
            popleft = queue.popleft
            for _ in range(count):
                rec = popleft()
                try:
                    chunks.append(encode_record(rec))
                except (ValueError, KeyError, struct.error, UnicodeError, AttributeError):
                    metrics.JOURNAL_RECORDS_DROPPED.labels(reason="unencodable").inc()
            if chunks:
                self._write(b"".join(chunks), len(chunks))
        if self._fd >= 0 and (
            self._segment_bytes >= self.max_segment_bytes
            or time.monotonic() - self._segment_opened >= self.max_segment_age
        ):
            self._close_segment()
        metrics.JOURNAL_PENDING.set(len(queue))
        if count:
            metrics.JOURNAL_FLUSH_SECONDS.observe(time.perf_counter() - started)

    def _write(self, data: bytes, nrecords: int) -> None:
        try:
            if self._fd < 0:
                self._open_segment()
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            # Abandon this segment (a reader will skip its torn tail) and start a fresh one next time.
            metrics.JOURNAL_WRITE_ERRORS.inc()
            metrics.JOURNAL_RECORDS_DROPPED.labels(reason="write_error").inc(nrecords)
            log.warning("journal write to %s failed (%s): %d records dropped", self.directory, exc, nrecords)
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            return
        self._segment_bytes += len(data)
        metrics.JOURNAL_RECORDS_WRITTEN.inc(nrecords)

    def _open_segment(self) -> None:
        if self._seq < 0:
            self._seq = self._next_free_seq()
        makedirs_exact(self.directory, dir_mode_for(self.file_mode))  # `.kvfs/` too
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        for _ in range(1000):
            path = self.directory / segment_name(self.writer_id, self._seq)
            try:
                fd = os.open(path, flags, self.file_mode)
            except FileExistsError:
                self._seq += 1
                continue
            os.fchmod(fd, self.file_mode)  # exact mode whatever the umask; once per segment
            self._fd = fd
            self._segment_bytes = 0
            self._segment_opened = time.monotonic()
            return
        raise FileExistsError(f"no free journal segment name for writer {self.writer_id}")

    def _next_free_seq(self) -> int:
        highest = -1
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                match = SEGMENT_RE.match(entry.name)
                if match and match["writer"] == self.writer_id:
                    highest = max(highest, int(match["seq"]))
        return highest + 1

    def _close_segment(self) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, END_RECORD)
            if self.fsync:
                os.fdatasync(self._fd)
            metrics.JOURNAL_SEGMENTS_CLOSED.inc()
        except OSError as exc:
            metrics.JOURNAL_WRITE_ERRORS.inc()
            log.warning("could not close journal segment cleanly: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            self._seq += 1
        try:
            self._enforce_bound()
        except Exception:  # noqa: BLE001 - the flusher must survive anything; the bound is retried next rotation
            log.exception("journal bound enforcement failed")

    def _enforce_bound(self) -> None:
        """Compact this writer's oldest closed segments when they exceed `max_journal_bytes` (see the class)."""
        if self.max_journal_bytes <= 0 or self._compacting:
            return
        closed: list[tuple[int, str, int]] = []
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                match = SEGMENT_RE.match(entry.name)
                if match and match["writer"] == self.writer_id and int(match["seq"]) < self._seq:
                    with contextlib.suppress(OSError):
                        closed.append(
                            (int(match["seq"]), entry.name, entry.stat(follow_symlinks=False).st_size)
                        )
        total = sum(size for _, _, size in closed)
        metrics.JOURNAL_BYTES.set(total)
        if total <= self.max_journal_bytes:
            return
        goal = self.max_journal_bytes * 3 // 4
        victims: list[str] = []
        for _seq, name, size in sorted(closed):
            if total <= goal:
                break
            if name in self._compacted:
                continue
            victims.append(name)
            total -= size
        if not victims:
            return
        kept: list[bytes] = []
        dropped = 0
        for name in victims:
            try:
                data = (self.directory / name).read_bytes()
            except OSError:
                continue
            for rec in decode_records(data, final=True).records:
                if rec.kind is RecordKind.STORE:
                    kept.append(encode_record(rec))
                else:
                    dropped += 1
        self._compacting = True
        try:
            if kept:
                self._write(b"".join(kept), len(kept))
                if self._fd < 0:  # the write failed (counted): keep the old segments
                    return
                self._compacted.add(segment_name(self.writer_id, self._seq))
                self._close_segment()
        finally:
            self._compacting = False
        for name in victims:  # only now: a crash in between leaves stores twice, never none
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)
            self._compacted.discard(name)
        metrics.JOURNAL_RECORDS_DROPPED.labels(reason="journal_bound").inc(dropped)
        log.warning(
            "journal of %s over %d bytes (no evictor consuming it?): compacted %d segments, dropped %d access "
            "records, kept %d store records",
            self.writer_id,
            self.max_journal_bytes,
            len(victims),
            dropped,
            len(kept),
        )


# --- reader ---------------------------------------------------------------------------------------------------


class JournalReader:
    """Reads every writer's segments from given offsets; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str], *, abandon_after: float = 300.0) -> None:
        self.root = Path(root)
        self.directory = journal_dir(root)
        self.abandon_after = abandon_after

    def segments(self) -> list[tuple[str, os.stat_result]]:
        """(name, stat) of every segment file, in name order (per writer: sequence order)."""
        found = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if SEGMENT_RE.match(entry.name):
                        with contextlib.suppress(OSError):
                            found.append((entry.name, entry.stat(follow_symlinks=False)))
        except FileNotFoundError:
            return []
        found.sort(key=lambda item: item[0])
        return found

    def read(self, offsets: Mapping[str, int], *, max_records: int | None = None) -> JournalBatch:
        batch = JournalBatch()
        now = time.time()
        for name, st in self.segments():
            if max_records is not None and len(batch.records) >= max_records:
                break
            offset = max(0, offsets.get(name, 0))
            size = st.st_size
            abandoned = now - st.st_mtime >= self.abandon_after
            if offset >= size:
                if offset == size and (abandoned or self._ends_with_end_record(name, size)):
                    batch.offsets[name] = offset
                    batch.finished.append(name)
                continue
            remaining = None if max_records is None else max_records - len(batch.records)
            try:
                data = self._read_range(name, offset, min(size - offset, _MAX_READ_PER_SEGMENT))
            except OSError as exc:
                log.warning("cannot read journal segment %s: %s", name, exc)
                continue
            reaches_eof = offset + len(data) >= size
            decoded = decode_records(data, final=False, max_records=remaining, now=now)
            stalled = not decoded.closed and decoded.end < len(data)
            if (
                stalled
                and abandoned
                and reaches_eof
                and (remaining is None or len(decoded.records) < remaining)
            ):
                # A dead writer: nothing more will come, so skip (and count) what cannot be decoded.
                decoded = decode_records(data, final=True, max_records=remaining, now=now)
            if (
                stalled
                and not reaches_eof
                and decoded.end < len(data) - _MAX_FRAME
                and (remaining is None or len(decoded.records) < remaining)
            ):
                # More bytes follow this chunk, so what could not be decoded in it is no record still being
                # written: every record that starts before the last _MAX_FRAME bytes would have fitted.  Skip
                # to there (the next read resyncs), or a chunk of garbage would stop this segment for good.
                keep = len(data) - _MAX_FRAME
                log.warning(
                    "journal segment %s: skipped %d bytes that hold no record at offset %d",
                    name,
                    keep - decoded.end,
                    offset + decoded.end,
                )
                decoded.bad += 1
                decoded.end = keep
            if decoded.closed and decoded.end < len(data):
                # Bytes after an END record are not the writer's: consume them as corrupt.
                tail = decode_records(
                    memoryview(data)[decoded.end :], final=True, max_records=remaining, now=now
                )
                decoded.records.extend(tail.records)
                decoded.bad += tail.bad + tail.torn
                decoded.invalid += tail.invalid
                decoded.future += tail.future
                decoded.end = len(data)
            new_offset = offset + decoded.end
            batch.records.extend(decoded.records)
            batch.offsets[name] = new_offset
            if decoded.bad:
                metrics.JOURNAL_BAD_RECORDS.labels(reason="corrupt").inc(decoded.bad)
            if decoded.torn:
                metrics.JOURNAL_BAD_RECORDS.labels(reason="torn_tail").inc(decoded.torn)
                log.warning("journal segment %s: skipped the torn tail of a dead writer", name)
            if decoded.invalid:
                metrics.JOURNAL_BAD_RECORDS.labels(reason="invalid").inc(decoded.invalid)
                log.warning(
                    "journal segment %s: skipped %d records with out-of-range fields", name, decoded.invalid
                )
            if decoded.future:
                metrics.JOURNAL_FUTURE_RECORDS.inc(decoded.future)
            batch.bad_records += decoded.bad + decoded.torn + decoded.invalid
            if new_offset >= size and (decoded.closed or abandoned):
                batch.finished.append(name)
        metrics.JOURNAL_RECORDS_READ.inc(len(batch.records))
        return batch

    def remove(self, segment_names: Iterable[str]) -> int:
        """Delete consumed segments (call after committing their offsets); returns how many were removed."""
        removed = 0
        for name in segment_names:
            if not SEGMENT_RE.match(name):
                metrics.UNSAFE_PATHS_REFUSED.labels(reason="not_a_segment").inc()
                log.warning("refusing to remove %r: not a journal segment name", name)
                continue
            try:
                os.unlink(self.directory / name)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove journal segment %s: %s", name, exc)
        return removed

    def backlog_bytes(self, offsets: Mapping[str, int]) -> int:
        """Bytes written to segments but not yet consumed at `offsets`."""
        return sum(max(0, st.st_size - offsets.get(name, 0)) for name, st in self.segments())

    def _read_range(self, name: str, offset: int, length: int) -> bytes:
        fd = os.open(self.directory / name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            chunks = []
            while length > 0:
                chunk = os.pread(fd, length, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _ends_with_end_record(self, name: str, size: int) -> bool:
        if size < len(END_RECORD):
            return False
        try:
            return self._read_range(name, size - len(END_RECORD), len(END_RECORD)) == END_RECORD
        except OSError:
            return False
