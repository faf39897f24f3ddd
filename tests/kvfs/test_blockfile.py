"""Block files: round trips, every miss reason (counted, never raised), atomic publish, modes, O_DIRECT."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from kvfs import blockfile
from kvfs.blockfile import (
    ALIGNMENT,
    HEADER_SIZE,
    MAX_KEY_LEN,
    BlockIdentity,
    Durability,
    MissReason,
    StoreOutcome,
    aligned_buffer,
    check_block_file,
    encode_header,
    load_block,
    parse_header,
    probe_o_direct,
    read_header,
    store_block,
)

FP = hashlib.sha256(b"namespace fields").digest()
IDENT = BlockIdentity(FP, bytes.fromhex("ab" * 32) + (0).to_bytes(4, "big"))


@pytest.fixture(autouse=True)
def _both_paths(block_io: str) -> str:
    """Every test here on the compiled block-file path and on the Python one."""
    return block_io


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stored(tmp_path: Path, payload: bytes, ident: BlockIdentity = IDENT, name: str = "b.kvfs") -> Path:
    path = tmp_path / "ns_0123456789ab_r0" / "abc" / "de_g0" / name
    result = store_block(path, payload, ident)
    assert result.outcome is StoreOutcome.STORED, result
    return path


# --- round trips -----------------------------------------------------------------------------------------------


@given(payload=st.binary(max_size=20_000), key=st.binary(max_size=200), direct=st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_store_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, key: bytes, direct: bool
) -> None:
    ident = BlockIdentity(FP, key)
    path = tmp_path_factory.mktemp("rt") / "x" / "b.kvfs"
    src = aligned_buffer(len(payload))
    src[: len(payload)] = payload
    result = store_block(path, memoryview(src)[: len(payload)], ident, direct=direct)
    assert (result.outcome, result.nbytes) == (StoreOutcome.STORED, len(payload))
    assert path.stat().st_size == HEADER_SIZE + len(payload)
    loaded = load_block(path, ident, direct=direct)
    assert (loaded.ok, loaded.reason, loaded.nbytes, loaded.payload) == (True, None, len(payload), payload)
    out = aligned_buffer(len(payload) + ALIGNMENT)
    into = load_block(path, ident, out, direct=direct)
    assert into.ok and into.payload is None and into.nbytes == len(payload)
    assert out[: len(payload)] == payload
    assert check_block_file(path, FP) is None
    header = read_header(path)
    assert not isinstance(header, MissReason)
    assert (header.payload_len, header.key, header.fingerprint) == (len(payload), key, FP)


def test_payload_buffer_types(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    for i, buf in enumerate([data, bytearray(data), memoryview(data), memoryview(bytearray(data))]):
        path = tmp_path / f"{i}.kvfs"
        assert store_block(path, buf, IDENT).outcome is StoreOutcome.STORED
        assert load_block(path, IDENT).payload == data
    # Multi-byte formats are stored as their raw bytes.
    words = memoryview(bytearray(data)).cast("I")
    assert store_block(tmp_path / "w.kvfs", words, IDENT).nbytes == len(data)
    with pytest.raises(ValueError, match="C-contiguous"):
        store_block(tmp_path / "nc.kvfs", memoryview(data)[::2], IDENT)


# --- miss reasons ----------------------------------------------------------------------------------------------


def test_missing_file_is_a_miss(tmp_path: Path) -> None:
    result = load_block(tmp_path / "nope" / "b.kvfs", IDENT)
    assert (result.ok, result.reason, result.payload) == (False, MissReason.MISSING, None)
    assert check_block_file(tmp_path / "nope.kvfs") is MissReason.MISSING
    assert read_header(tmp_path / "nope.kvfs") is MissReason.MISSING


def test_wrong_identity(tmp_path: Path) -> None:
    path = stored(tmp_path, b"payload")
    other_fp = BlockIdentity(hashlib.sha256(b"other").digest(), IDENT.key)
    other_key = BlockIdentity(FP, IDENT.key[:-1] + b"\x01")
    assert load_block(path, other_fp).reason is MissReason.FINGERPRINT_MISMATCH
    assert load_block(path, other_key).reason is MissReason.KEY_MISMATCH
    assert check_block_file(path, other_fp.fingerprint) is MissReason.FINGERPRINT_MISMATCH


@pytest.mark.parametrize("keep", [0, 1, 7, 100, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 500])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    path = stored(tmp_path, os.urandom(1000))
    os.truncate(path, keep)
    result = load_block(path, IDENT)
    assert result.reason is MissReason.TRUNCATED
    assert check_block_file(path) is MissReason.TRUNCATED


def test_trailing_bytes_and_small_out_buffer_are_bad_header(tmp_path: Path) -> None:
    path = stored(tmp_path, os.urandom(1000))
    assert load_block(path, IDENT, bytearray(999)).reason is MissReason.BAD_HEADER
    assert load_block(path, IDENT, bytearray(1000)).ok
    with open(path, "ab") as fh:
        fh.write(b"x")
    assert load_block(path, IDENT).reason is MissReason.BAD_HEADER
    assert check_block_file(path) is MissReason.BAD_HEADER


def test_not_a_block_file(tmp_path: Path) -> None:
    path = tmp_path / "stock.bin"
    path.write_bytes(os.urandom(HEADER_SIZE + 10))  # a stock vLLM file: raw bytes, no header
    assert load_block(path, IDENT).reason is MissReason.BAD_MAGIC
    assert read_header(path) is MissReason.BAD_MAGIC
    short = tmp_path / "short"
    short.write_bytes(b"NOTKVFS")
    assert load_block(short, IDENT).reason is MissReason.BAD_MAGIC
    assert load_block(tmp_path, IDENT).reason is MissReason.NOT_REGULAR  # a directory


def test_other_version_and_bad_header_fields(tmp_path: Path) -> None:
    path = stored(tmp_path, b"abc")
    raw = bytearray(path.read_bytes())
    v2 = bytearray(raw)
    struct.pack_into("<H", v2, 8, 2)
    path.write_bytes(v2)
    assert load_block(path, IDENT).reason is MissReason.BAD_VERSION
    # A consistent header (its checksum recomputed) with an unknown checksum algorithm is still refused.
    algo = bytearray(raw)
    struct.pack_into("<H", algo, 10, 99)
    struct.pack_into("<Q", algo, HEADER_SIZE - 8, blockfile.checksum64(memoryview(algo)[: HEADER_SIZE - 8]))
    path.write_bytes(algo)
    assert load_block(path, IDENT).reason is MissReason.BAD_HEADER


EXPECTED_FLIP_REASON = [
    (range(0, 8), {MissReason.BAD_MAGIC}),
    (range(8, 10), {MissReason.BAD_VERSION}),
    (range(10, HEADER_SIZE), {MissReason.BAD_HEADER}),
]


@given(payload=st.binary(min_size=1, max_size=3000), data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bit_flip_is_detected(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, data: st.DataObject
) -> None:
    path = stored(tmp_path_factory.mktemp("flip"), payload)
    raw = bytearray(path.read_bytes())
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(raw)
    result = load_block(path, IDENT)
    assert not result.ok
    offset = bit // 8
    if offset >= HEADER_SIZE:
        assert result.reason is MissReason.CHECKSUM_MISMATCH
    else:
        expected = next(reasons for span, reasons in EXPECTED_FLIP_REASON if offset in span)
        assert result.reason in expected
    assert check_block_file(path) is result.reason


def test_checksum_mismatch_with_out_buffer_and_direct(tmp_path: Path) -> None:
    payload = os.urandom(3 * ALIGNMENT)
    path = stored(tmp_path, payload)
    with open(path, "r+b") as fh:
        fh.seek(HEADER_SIZE + 5000)
        fh.write(b"\x00\x01")
    out = aligned_buffer(len(payload))
    assert load_block(path, IDENT, out, direct=True).reason is MissReason.CHECKSUM_MISMATCH
    assert load_block(path, IDENT).reason is MissReason.CHECKSUM_MISMATCH


def test_parse_header_api() -> None:
    header = encode_header(IDENT, 123, 456)
    parsed = parse_header(header)
    assert not isinstance(parsed, MissReason)
    assert (parsed.payload_len, parsed.payload_checksum, parsed.key) == (123, 456, IDENT.key)
    assert parse_header(header[:100]) is MissReason.TRUNCATED
    assert parse_header(b"") is MissReason.TRUNCATED


def test_identity_validation() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        BlockIdentity(b"short", b"k")
    with pytest.raises(ValueError, match="key"):
        BlockIdentity(FP, b"k" * (MAX_KEY_LEN + 1))
    BlockIdentity(FP, b"k" * MAX_KEY_LEN)


def test_read_only_out_buffer_is_a_caller_error(tmp_path: Path) -> None:
    path = stored(tmp_path, b"abc")
    with pytest.raises(TypeError):
        load_block(path, IDENT, b"\x00" * 10)


# --- publishing ------------------------------------------------------------------------------------------------


def test_existing_block_is_not_rewritten(tmp_path: Path) -> None:
    path = stored(tmp_path, b"first")
    mtime = path.stat().st_mtime_ns
    result = store_block(path, b"second", IDENT)
    assert (result.outcome, result.nbytes) == (StoreOutcome.EXISTS, 0)
    assert path.stat().st_mtime_ns == mtime and load_block(path, IDENT).payload == b"first"


@pytest.mark.parametrize("durability", list(Durability))
def test_durability_modes_publish_without_temp_files(tmp_path: Path, durability: Durability) -> None:
    path = tmp_path / "d" / "b.kvfs"
    assert store_block(path, b"x" * 5000, IDENT, durability=durability).outcome is StoreOutcome.STORED
    assert os.listdir(path.parent) == ["b.kvfs"]
    assert Durability("data+dir") is Durability.DATA_DIR


def test_concurrent_writers_of_one_block(tmp_path: Path) -> None:
    path = tmp_path / "race" / "b.kvfs"
    payload = os.urandom(1 << 20)
    outcomes: list[StoreOutcome] = []
    barrier = threading.Barrier(4)

    def write() -> None:
        barrier.wait()
        outcomes.append(store_block(path, payload, IDENT).outcome)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert StoreOutcome.STORED in outcomes and StoreOutcome.FAILED not in outcomes
    assert os.listdir(path.parent) == ["b.kvfs"]  # every loser removed its temp file
    assert load_block(path, IDENT).payload == payload


def test_file_and_directory_modes_despite_umask(tmp_path: Path) -> None:
    # umask is process-wide: run in a child with a strict umask.
    code = textwrap.dedent(
        f"""
        import os, sys
        os.umask(0o077)
        from kvfs.blockfile import store_block, BlockIdentity
        ident = BlockIdentity(bytes(32), b"k")
        assert store_block({str(tmp_path / "a" / "b" / "f.kvfs")!r}, b"x", ident).outcome == "stored"
        assert store_block({str(tmp_path / "a" / "c" / "g.kvfs")!r}, b"x", ident, file_mode=0o640).outcome == "stored"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "a" / "b" / "f.kvfs").stat().st_mode & 0o777 == 0o660
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o770
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o770
    assert (tmp_path / "a" / "c" / "g.kvfs").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "a" / "c").stat().st_mode & 0o777 == 0o750


def test_write_failure_is_reported_and_leaves_no_temp(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel cut the write short and then fail it (EFBIG): a real short write followed
    # by a real I/O error, the same path as ENOSPC on a full filesystem.
    target = tmp_path / "full" / "b.kvfs"
    code = textwrap.dedent(
        f"""
        import resource, signal, json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 4096 + 100, 3 * 4096 + 100))
        from kvfs.blockfile import store_block, BlockIdentity
        r = store_block({str(target)!r}, b"y" * 100_000, BlockIdentity(bytes(32), b"k"))
        print(json.dumps([r.outcome, r.nbytes, r.error]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    outcome, nbytes, error = json.loads(out)
    assert (outcome, nbytes) == ("failed", 0)
    assert "File too large" in error or "EFBIG" in error
    assert os.listdir(target.parent) == []  # the partial temp file was removed
    assert load_block(target, IDENT).reason is MissReason.MISSING


def test_store_into_unwritable_place_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = store_block(blocker / "sub" / "b.kvfs", b"x", IDENT)
    assert result.outcome is StoreOutcome.FAILED and result.error


# --- O_DIRECT --------------------------------------------------------------------------------------------------


def test_probe_is_cached_per_filesystem(tmp_path: Path) -> None:
    first = probe_o_direct(tmp_path)
    (tmp_path / "sub").mkdir()
    assert probe_o_direct(tmp_path / "sub") is first  # same filesystem: cached, no new probe file
    assert not any(p.name.startswith(".o_direct_probe") for p in tmp_path.iterdir())


def test_probe_failure_is_loud_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = counter("kvfs_o_direct_fallbacks_total", reason="probe")
    assert probe_o_direct(tmp_path / "does-not-exist") is False
    not_a_dir = tmp_path / "f"
    not_a_dir.write_text("x")
    assert probe_o_direct(not_a_dir, refresh=True) is False
    assert counter("kvfs_o_direct_fallbacks_total", reason="probe") == before + 2
    assert any("O_DIRECT is NOT usable" in r.message for r in caplog.records)
    probe_o_direct(tmp_path, refresh=True)  # restore the cache entry for this filesystem


@pytest.mark.skipif(not getattr(os, "O_DIRECT", 0), reason="platform without O_DIRECT")
def test_direct_io_with_aligned_and_unaligned_buffers(tmp_path: Path) -> None:
    if not probe_o_direct(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    payload = os.urandom(5 * ALIGNMENT + 123)
    aligned = aligned_buffer(len(payload))
    aligned[: len(payload)] = payload
    before_unaligned = counter("kvfs_o_direct_fallbacks_total", reason="unaligned_buffer")
    path = tmp_path / "a.kvfs"
    assert store_block(path, memoryview(aligned)[: len(payload)], IDENT, direct=True).outcome == "stored"
    assert counter("kvfs_o_direct_fallbacks_total", reason="unaligned_buffer") == before_unaligned
    out = aligned_buffer(len(payload))
    assert load_block(path, IDENT, out, direct=True).ok and out[: len(payload)] == payload
    assert load_block(path, IDENT, direct=True).payload == payload
    # An exactly-sized aligned buffer (payload not a multiple of 4096): aligned part direct, tail buffered.
    exact = memoryview(aligned_buffer(len(payload)))[: len(payload)]
    assert load_block(path, IDENT, exact, direct=True).ok and bytes(exact) == payload
    # bytes are never page-aligned: a counted fallback to buffered I/O, same result.
    path2 = tmp_path / "b.kvfs"
    assert store_block(path2, payload, IDENT, direct=True).outcome == "stored"
    unaligned_out = memoryview(bytearray(len(payload) + 1))[1:]
    assert load_block(path2, IDENT, unaligned_out, direct=True).ok and bytes(unaligned_out) == payload
    assert counter("kvfs_o_direct_fallbacks_total", reason="unaligned_buffer") == before_unaligned + 2
    assert path.read_bytes() == path2.read_bytes()


# --- publishing in few system calls ------------------------------------------------------------------------------


def _rival_publishes_during_the_write(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Another writer publishes the block while this store writes its temp file (after the first stat)."""
    write = blockfile._write_block

    def racing_write(fd: int, *args: object, **kwargs: object) -> None:
        write(fd, *args, **kwargs)  # type: ignore[arg-type]
        path.write_bytes(b"the rival's file")

    monkeypatch.setattr(blockfile, "_write_block", racing_write)


@pytest.mark.usefixtures("python_block_io")
@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "stat+rename"])
def test_a_block_published_during_the_write_is_exists_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noreplace: bool
) -> None:
    if noreplace and blockfile._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    if not noreplace:
        monkeypatch.setattr(blockfile, "_renameat2", None)
    path = tmp_path / "d" / "b.kvfs"
    path.parent.mkdir()
    _rival_publishes_during_the_write(monkeypatch, path)
    result = store_block(path, b"mine" * 1000, IDENT)
    assert (result.outcome, result.nbytes) == (StoreOutcome.EXISTS, 0)
    assert path.read_bytes() == b"the rival's file"  # never replaced
    assert os.listdir(path.parent) == ["b.kvfs"]  # our temp file removed


@pytest.mark.usefixtures("python_block_io")
def test_a_filesystem_refusing_renameat2_flags_falls_back_to_stat_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []

    def refusing(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
        calls.append(new)
        ctypes.set_errno(errno.EINVAL)  # what NFS answers to RENAME_NOREPLACE
        return -1

    monkeypatch.setattr(blockfile, "_renameat2", refusing)
    first = tmp_path / "d" / "a.kvfs"
    assert store_block(first, b"x" * 5000, IDENT).outcome is StoreOutcome.STORED
    assert load_block(first, IDENT).payload == b"x" * 5000
    assert blockfile._renameat2 is None and len(calls) == 1  # refused once, then never asked again
    second = tmp_path / "d" / "b.kvfs"
    _rival_publishes_during_the_write(monkeypatch, second)
    assert store_block(second, b"y" * 5000, IDENT).outcome is StoreOutcome.EXISTS
    assert second.read_bytes() == b"the rival's file" and len(calls) == 1


@pytest.mark.usefixtures("python_block_io")
def test_a_failing_publish_is_a_failed_store_without_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(blockfile, "_renameat2", failing)
    path = tmp_path / "d" / "b.kvfs"
    result = store_block(path, b"z" * 5000, IDENT)
    assert (result.outcome, result.nbytes) == (StoreOutcome.FAILED, 0)
    assert result.error is not None and "Input/output error" in result.error
    assert os.listdir(path.parent) == []
    assert blockfile._renameat2 is failing  # an I/O error is not a refused flag


@pytest.mark.usefixtures("python_block_io")
@pytest.mark.parametrize("direct", [False, True])
def test_a_small_payload_goes_out_with_its_header_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    writes: list[int] = []
    pwritev = os.pwritev

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        writes.append(offset)
        return pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", counting)
    payload = aligned_buffer(64 << 10)
    payload[:] = os.urandom(64 << 10)
    path = tmp_path / "d" / "b.kvfs"
    assert store_block(path, payload, IDENT, direct=direct).outcome is StoreOutcome.STORED
    assert writes == [0]
    assert load_block(path, IDENT).payload == bytes(payload)
    assert check_block_file(path) is None


@pytest.mark.usefixtures("python_block_io")
@pytest.mark.parametrize("direct", [False, True])
def test_short_vectored_writes_and_reads_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    # Network filesystems may transfer less than asked: every byte still lands, header and payload alike.
    step = 3 * ALIGNMENT  # page multiples, so that O_DIRECT offsets stay aligned
    pwritev, preadv = os.pwritev, os.preadv
    calls = {"w": 0, "r": 0}

    def short_write(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls["w"] += 1
        data = b"".join(bytes(b) for b in buffers)[:step]
        staged = aligned_buffer(len(data))  # page-aligned, as O_DIRECT wants
        staged[: len(data)] = data
        return pwritev(fd, [memoryview(staged)[: len(data)]], offset)

    def short_read(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls["r"] += 1
        staged = aligned_buffer(step)
        n = preadv(fd, [memoryview(staged)[: min(step, sum(len(b) for b in buffers))]], offset)
        got = bytes(staged[:n])
        pos = 0
        for b in buffers:
            take = min(len(b), len(got) - pos)
            b[:take] = got[pos : pos + take]
            pos += take
        return len(got)

    payload = aligned_buffer(10 * ALIGNMENT + 100)
    payload[:] = os.urandom(len(payload))
    path = tmp_path / "d" / "b.kvfs"
    monkeypatch.setattr(os, "pwritev", short_write)
    assert store_block(path, payload, IDENT, direct=direct).outcome is StoreOutcome.STORED
    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "preadv", short_read)
    out = aligned_buffer(len(payload))
    result = load_block(path, IDENT, out, direct=direct)
    monkeypatch.setattr(os, "preadv", preadv)
    assert result.ok and bytes(out[: result.nbytes]) == bytes(payload)
    assert calls["w"] > 1 and calls["r"] > 1
    assert check_block_file(path) is None
