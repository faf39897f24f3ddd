"""Self-validating block files: a 4096-byte header, then the payload (O_DIRECT-aligned).

Header (little-endian; the rest of the 4096 bytes is zero):

    off  size  field
      0     8  magic            b"KVFSBLK1"
      8     2  format version   1
     10     2  checksum algo    payload checksum algorithm (kvfs.checksum: 2 written, 1 still read)
     12     4  header size      4096
     16     8  payload length
     24     8  payload checksum of the payload under that algorithm
     32    32  fingerprint      sha256 of the namespace's canonical fingerprint JSON
     64     2  key length
     66     2  flags            0 (reserved)
     68     n  key              the vLLM offload key bytes (n <= MAX_KEY_LEN)
   4088     8  header checksum  xxh3-64 of bytes [0, 4088)

Publishing is atomic: a unique `O_EXCL` temp file in the final directory, a full write (short writes looped),
optional fsync (`Durability`), close, rename.  A reader therefore sees either no file or a complete one; a
writer killed at any instant leaves at most a `*.tmp` orphan.

Default durability is `none`: after a *host* crash a renamed file may hold unwritten pages, but its payload
checksum then fails and the load is an ordinary miss (vLLM recomputes), so paying an fsync per block buys
nothing for a cache.  `data` / `data+dir` exist for filesystems or operators that want the file (and its name)
on stable storage before the store completes.

Loads and stores never raise for I/O problems: a load returns a `LoadResult` with a `MissReason`, a store a
`StoreResult` with `FAILED`; both are counted in `kvfs.metrics`.

O_DIRECT: call `probe_o_direct(root)` once and pass its answer as `direct=`.  Direct I/O needs 4096-aligned
buffers (mmap'd or pinned memory); an unaligned buffer or a filesystem that refuses O_DIRECT falls back to
buffered I/O for that call, counted in `kvfs_o_direct_fallbacks_total{reason}`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import secrets
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Final

from kvfs import metrics, nativeio
from kvfs.checksum import (
    HASH_PIECE_BYTES,
    PAYLOAD_ALGOS,
    PIECES_ALGO_ID,
    Buffer,
    PieceHasher,
    checksum64,
    payload_checksum,
    payload_hasher,
)
from kvfs.layout import dir_mode_for, makedirs, temp_name_for

log = logging.getLogger(__name__)

HEADER_SIZE: Final = 4096
MAGIC: Final = b"KVFSBLK1"
FORMAT_VERSION: Final = 1
ALIGNMENT: Final = 4096  # O_DIRECT buffer/offset/length alignment that every Linux filesystem accepts
_FIXED = struct.Struct("<8sHHIQQ32sHH")  # magic .. flags; the key follows
_HEADER_CHECKSUM_OFFSET: Final = HEADER_SIZE - 8
MAX_KEY_LEN: Final = _HEADER_CHECKSUM_OFFSET - _FIXED.size
FINGERPRINT_LEN: Final = 32
# The largest payload a block may claim (far above any KV block: tens of MiB).  A header is written by whoever
# can write the mount: an unbounded length let a sparse 1 TiB file make a load allocate a terabyte (MemoryError)
# and `kvfs verify` read it for 25 minutes and call it sound.
MAX_PAYLOAD_LEN: Final = 1 << 32
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
# Every block open is non-blocking: opening a FIFO for reading would otherwise wait for a writer forever (and
# freeze a connector I/O thread).  On a regular file O_NONBLOCK changes nothing; the type is checked by fstat.
_O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
# Inspection reads (verify) must not refresh atime: a scan adopts atime as recency, so a full verify would make
# every block look just used.  Refused (EPERM) on files owned by another user: then plain reads.
_O_NOATIME: Final = getattr(os, "O_NOATIME", 0)
_VERIFY_CHUNK: Final = 8 << 20
# Payloads are checksummed piece by piece right before each piece is written / right after it is read, while it
# is still in the CPU cache: a separate xxh3 pass over a large payload would cost one more trip through host
# memory per byte.  Not smaller: each piece costs a syscall and two GIL hand-offs, and with 16 connector I/O
# threads pieces of 256 KiB-1 MiB ran 1.2-4x slower on an H100 host than 4 MiB (docs/benchmarks.md, "Connector
# data path").  A multiple of ALIGNMENT (O_DIRECT offsets); `--piece-kib` of `tools.bench.blockfile` and
# `tools.datapath.bench` tunes it.  An I/O piece, unlike kvfs.checksum.HASH_PIECE_BYTES, is not part of the format.
PIECE_BYTES = 4 << 20
# The compiled path (kvfs.nativeio) reads and writes a payload in steps of one hash piece, each hashed while it is
# in the CPU's cache: its steps cost no GIL hand-off, so smaller steps than PIECE_BYTES cost next to nothing.
NATIVE_PIECE_BYTES: Final = HASH_PIECE_BYTES


class Durability(StrEnum):
    NONE = "none"
    DATA = "data"
    DATA_DIR = "data+dir"


class StoreOutcome(StrEnum):
    STORED = "stored"
    EXISTS = "exists"
    FAILED = "failed"


class MissReason(StrEnum):
    MISSING = "missing"
    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_HEADER = "bad_header"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    KEY_MISMATCH = "key_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    IO_ERROR = "io_error"
    NOT_REGULAR = (
        "not_regular"  # a FIFO, device or socket at a block path: never read (it could block forever)
    )


@dataclass(frozen=True, slots=True)
class BlockIdentity:
    """What a block file must prove it is: the namespace fingerprint digest and the offload key."""

    fingerprint: bytes
    key: bytes

    def __post_init__(self) -> None:
        if len(self.fingerprint) != FINGERPRINT_LEN:
            raise ValueError(f"fingerprint must be {FINGERPRINT_LEN} bytes, got {len(self.fingerprint)}")
        if len(self.key) > MAX_KEY_LEN:
            raise ValueError(f"key must be at most {MAX_KEY_LEN} bytes, got {len(self.key)}")


@dataclass(slots=True)
class StoreResult:
    outcome: StoreOutcome
    nbytes: int
    error: str | None = None


@dataclass(slots=True)
class LoadResult:
    """`payload` is the bytes when no `out` buffer was given; with `out`, the first `nbytes` of it hold them.

    `verified` is False only for `load_block(..., verify=False)`: the header, identity and length are checked
    and the payload read, but its checksum is left to the caller (`settle_load`) — never use it before.
    """

    ok: bool
    reason: MissReason | None
    nbytes: int
    payload: bytes | None = None
    verified: bool = True
    header: BlockHeader | None = None


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    checksum_algo: int
    payload_len: int
    payload_checksum: int
    fingerprint: bytes
    key: bytes


# Loads and stores are counted by their caller (the connector: kvfs_connector_loads_total, _load_misses_total,
# _stores_total), once per event; this library only returns outcomes.


# --- header ---------------------------------------------------------------------------------------------------


def encode_header(
    ident: BlockIdentity, payload_len: int, payload_checksum: int, algo: int = PIECES_ALGO_ID
) -> bytes:
    """The 4096 header bytes for a payload whose checksum under algorithm `algo` is `payload_checksum`."""
    buf = _unsealed_header(ident, payload_len, payload_checksum, algo)
    struct.pack_into(
        "<Q", buf, _HEADER_CHECKSUM_OFFSET, checksum64(memoryview(buf)[:_HEADER_CHECKSUM_OFFSET])
    )
    return bytes(buf)


# Where the payload checksum lies in a header: the compiled store (kvfs.nativeio) puts it there once it has hashed
# the payload, then the header's own checksum at _HEADER_CHECKSUM_OFFSET.
_PAYLOAD_CHECKSUM_OFFSET: Final = 24


def _unsealed_header(
    ident: BlockIdentity, payload_len: int, payload_checksum: int, algo: int = PIECES_ALGO_ID
) -> bytearray:
    """A header's bytes without its own checksum (zero there)."""
    buf = bytearray(HEADER_SIZE)
    _FIXED.pack_into(
        buf,
        0,
        MAGIC,
        FORMAT_VERSION,
        algo,
        HEADER_SIZE,
        payload_len,
        payload_checksum,
        ident.fingerprint,
        len(ident.key),
        0,
    )
    buf[_FIXED.size : _FIXED.size + len(ident.key)] = ident.key
    return buf


def parse_header(buf: Buffer) -> BlockHeader | MissReason:
    """Validate header bytes (magic, version, header checksum, fields); a `MissReason` when they are bad."""
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
    if len(view) < HEADER_SIZE:
        got = bytes(view[: len(MAGIC)])
        return MissReason.TRUNCATED if MAGIC.startswith(got) else MissReason.BAD_MAGIC
    magic, version, algo, header_size, payload_len, payload_sum, fingerprint, key_len, _flags = (
        _FIXED.unpack_from(view, 0)
    )
    if magic != MAGIC:
        return MissReason.BAD_MAGIC
    if version != FORMAT_VERSION:
        return MissReason.BAD_VERSION
    (stored_sum,) = struct.unpack_from("<Q", view, _HEADER_CHECKSUM_OFFSET)
    if checksum64(view[:_HEADER_CHECKSUM_OFFSET]) != stored_sum:
        return MissReason.BAD_HEADER
    if (
        algo not in PAYLOAD_ALGOS
        or header_size != HEADER_SIZE
        or key_len > MAX_KEY_LEN
        or payload_len > MAX_PAYLOAD_LEN
    ):
        return MissReason.BAD_HEADER
    key = bytes(view[_FIXED.size : _FIXED.size + key_len])
    return BlockHeader(version, algo, payload_len, payload_sum, fingerprint, key)


# --- buffers and O_DIRECT -------------------------------------------------------------------------------------


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, page-aligned anonymous buffer of at least `nbytes` (rounded up to ALIGNMENT), for O_DIRECT."""
    return mmap.mmap(-1, max(ALIGNMENT, _round_up(nbytes)))


def _round_up(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _is_aligned(view: memoryview) -> bool:
    """True when the buffer's address is ALIGNMENT-aligned (read-only buffers cannot be inspected: False)."""
    if view.readonly or len(view) == 0:
        return False
    try:
        anchor = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError):
        return False
    address = ctypes.addressof(anchor)
    del anchor
    return address % ALIGNMENT == 0


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("block payload buffers must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))


_tls = threading.local()


def _tls_header_buffer() -> mmap.mmap:
    buf = getattr(_tls, "header", None)
    if buf is None:
        buf = _tls.header = aligned_buffer(HEADER_SIZE)
    return buf


_probe_lock = threading.Lock()
_probe_cache: dict[int, bool] = {}


def probe_o_direct(directory: str | os.PathLike[str], *, refresh: bool = False) -> bool:
    """Whether O_DIRECT writes and reads work in `directory`'s filesystem (cached per filesystem).

    Writes, reads back and removes one aligned page in `directory`.  On failure logs a warning and counts
    `kvfs_o_direct_fallbacks_total{reason="probe"}`: callers then use buffered I/O.
    """
    try:
        dev = os.stat(directory).st_dev
    except OSError as exc:
        return _probe_failed(directory, f"cannot stat: {exc}")
    with _probe_lock:
        if not refresh and dev in _probe_cache:
            return _probe_cache[dev]
        ok = _probe_once(os.fspath(directory))
        _probe_cache[dev] = ok
        return ok


def _probe_once(directory: str) -> bool:
    if not _O_DIRECT:
        return _probe_failed(directory, "this platform has no O_DIRECT")
    path = os.path.join(directory, f".o_direct_probe_{secrets.token_hex(8)}.tmp")
    page = aligned_buffer(ALIGNMENT)
    page[:8] = b"kvfsprob"
    back = aligned_buffer(ALIGNMENT)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_DIRECT | _O_CLOEXEC, 0o600)
        try:
            if os.write(fd, page) != ALIGNMENT:
                return _probe_failed(directory, "short O_DIRECT write")
        finally:
            os.close(fd)
        fd = os.open(path, os.O_RDONLY | _O_DIRECT | _O_CLOEXEC)
        try:
            if os.readv(fd, [back]) != ALIGNMENT or back[:8] != b"kvfsprob":
                return _probe_failed(directory, "O_DIRECT read-back mismatch")
        finally:
            os.close(fd)
    except OSError as exc:
        return _probe_failed(directory, str(exc))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    log.info("O_DIRECT works in %s", directory)
    return True


def _probe_failed(directory: str | os.PathLike[str], why: str) -> bool:
    metrics.O_DIRECT_FALLBACKS.labels(reason="probe").inc()
    log.warning(
        "O_DIRECT is NOT usable in %s (%s): block I/O falls back to buffered reads/writes", directory, why
    )
    return False


def _direct_fallback(reason: str) -> None:
    metrics.O_DIRECT_FALLBACKS.labels(reason=reason).inc()
    log.debug("O_DIRECT fallback to buffered I/O: %s", reason)


# --- low-level loops ------------------------------------------------------------------------------------------


def _piece_bytes() -> int:
    return max(ALIGNMENT, PIECE_BYTES // ALIGNMENT * ALIGNMENT)


def _advance(pending: list[memoryview], n: int) -> None:
    """Drop the first `n` bytes of a vector of buffers after a short vectored read or write."""
    while pending and n >= len(pending[0]):
        n -= len(pending.pop(0))
    if n:
        pending[0] = pending[0][n:]


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Write every byte of `views` at `offset`, looping over short writes."""
    total = sum(map(len, views))
    written = os.pwritev(fd, views, offset) if total else 0
    if written == total:  # the usual case: all of it in one call
        return written
    if written <= 0:
        raise OSError(errno.EIO, "write made no progress")
    pending = [v for v in views if len(v)]
    _advance(pending, written)
    while pending:
        n = os.pwritev(fd, pending, offset + written)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        written += n
        _advance(pending, n)
    return written


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read up to len(view) bytes at `offset`, looping over short reads; fewer only at end of file."""
    total = 0
    while total < len(view):
        n = os.preadv(fd, [view[total:]], offset + total)
        if n == 0:
            break
        total += n
    return total


# --- store ----------------------------------------------------------------------------------------------------

_umask_lock = threading.Lock()
_umask_value: int | None = None


def _umask() -> int:
    """The process umask, read once (from /proc without the set-and-restore race when possible)."""
    global _umask_value
    if _umask_value is None:
        with _umask_lock:
            if _umask_value is None:
                value = None
                try:
                    with open("/proc/self/status", encoding="ascii") as fh:
                        for line in fh:
                            if line.startswith("Umask:"):
                                value = int(line.split()[1], 8)
                except (OSError, ValueError):
                    value = None
                if value is None:
                    value = os.umask(0o022)
                    os.umask(value)
                _umask_value = value
    return _umask_value


def store_block(
    path: str | os.PathLike[str],
    payload: Buffer,
    ident: BlockIdentity,
    *,
    durability: Durability = Durability.NONE,
    file_mode: int = 0o660,
    direct: bool = False,
    checksum: int | None = None,
) -> StoreResult:
    """Publish `payload` as a block file at `path` atomically; never raises for I/O errors.

    Returns EXISTS (without writing) when the final file is already there, or appears before the rename.
    `file_mode` is applied exactly, whatever the process umask (one fchmod when the umask would strip bits).
    `checksum`: the payload's algorithm-2 checksum when the caller already has it (the connector computes it on
    the GPU); the payload is then written without a CPU pass over it.
    """
    path = os.fspath(path)
    view = _byte_view(payload)
    nbytes = len(view)
    if nbytes > MAX_PAYLOAD_LEN:  # no reader would accept it
        return StoreResult(StoreOutcome.FAILED, 0, f"payload of {nbytes} bytes > MAX_PAYLOAD_LEN")
    native = nativeio.MODULE
    if native is not None:
        return _store_native(native, path, view, ident, durability, file_mode, direct, checksum)
    try:
        os.stat(path)
    except (OSError, ValueError):  # os.path.exists, without its Python call
        pass
    else:
        return StoreResult(StoreOutcome.EXISTS, 0)
    tmp = temp_name_for(path)
    fd = -1
    try:
        fd, use_direct = _open_temp(tmp, file_mode, direct)
        _write_block(fd, ident, view, use_direct, checksum)
        if durability is not Durability.NONE:
            os.fdatasync(fd)
        os.close(fd)
        fd = -1
        if not _publish_synced(tmp, path, durability):
            return StoreResult(StoreOutcome.EXISTS, 0)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        _remove_quietly(tmp)
        log.debug("store of %s failed: %s", path, exc)
        return StoreResult(StoreOutcome.FAILED, 0, f"{type(exc).__name__}: {exc}")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        _remove_quietly(tmp)
        raise
    return StoreResult(StoreOutcome.STORED, nbytes)


def _store_native(
    native: ModuleType,
    path: str,
    view: memoryview,
    ident: BlockIdentity,
    durability: Durability,
    file_mode: int,
    direct: bool,
    checksum: int | None,
) -> StoreResult:
    """store_block through the compiled path: the existence check, temp file, hash, write, close and publish in
    one call without the GIL (kvfs.nativeio); the same file, outcomes and errors as the Python path."""
    nbytes = len(view)
    tmp = temp_name_for(path)
    header: bytearray | mmap.mmap = _unsealed_header(ident, nbytes, 0)
    use_direct = bool(direct and _O_DIRECT)
    if use_direct:  # O_DIRECT writes from page-aligned memory: this thread's header page
        hbuf = _tls_header_buffer()
        hbuf[:HEADER_SIZE] = header
        header = hbuf
    umask = _umask_value if _umask_value is not None else _umask()
    dir_mode = dir_mode_for(file_mode)
    # Its directories, when missing, are created in the same call (as _open_creating_dirs does here).
    outcome, err, fallback = native.store(
        os.fsencode(tmp),
        os.fsencode(path),
        header,
        _PAYLOAD_CHECKSUM_OFFSET,
        _HEADER_CHECKSUM_OFFSET,
        view,
        checksum is not None,
        checksum or 0,
        HASH_PIECE_BYTES,
        NATIVE_PIECE_BYTES,
        file_mode,
        bool(file_mode & umask),
        dir_mode,
        bool(dir_mode & umask),
        durability is not Durability.NONE,
        _renameat2 is not None,
        use_direct,
    )
    if fallback:
        _direct_fallback(_NATIVE_FALLBACKS[fallback])
    if outcome == nativeio.STORED:
        if durability is Durability.DATA_DIR:
            try:
                _fsync_dir(os.path.dirname(path))
            except OSError as exc:
                return StoreResult(StoreOutcome.FAILED, 0, f"{type(exc).__name__}: {exc}")
        return StoreResult(StoreOutcome.STORED, nbytes)
    if outcome == nativeio.EXISTS:
        return StoreResult(StoreOutcome.EXISTS, 0)
    if outcome == nativeio.NOREPLACE_REFUSED:
        # Written and closed; `_publish` meets the same refusal and switches the process to stat + rename.
        try:
            if not _publish_synced(tmp, path, durability):
                return StoreResult(StoreOutcome.EXISTS, 0)
        except OSError as exc:
            _remove_quietly(tmp)
            return StoreResult(StoreOutcome.FAILED, 0, f"{type(exc).__name__}: {exc}")
        return StoreResult(StoreOutcome.STORED, nbytes)
    exc = OSError(err, os.strerror(err), tmp if outcome == nativeio.OPEN_FAILED else path)
    log.debug("store of %s failed: %s", path, exc)
    return StoreResult(StoreOutcome.FAILED, 0, f"{type(exc).__name__}: {exc}")


# rename(2) with RENAME_NOREPLACE: the publish and the check that no other writer published first in one system
# call (each call gives up and retakes the GIL: with 16 I/O threads on small files every hand-off counts), and
# without the window between a stat and a plain rename.  Python has no os.renameat2; glibc >= 2.28 does.
_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_renameat2 = _load_renameat2()
# Filesystems that refuse the flag (EINVAL: NFS, older FUSE, ...) switch the process to stat + rename for good:
# correct everywhere, one system call more.
_NOREPLACE_REFUSED: Final = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _publish_synced(tmp: str, path: str, durability: Durability) -> bool:
    """Publish a finished temp file, and under `data+dir` its directory entry; False (the temp file removed) when
    a block was already there.  Raises OSError."""
    if not _publish(tmp, path):
        _remove_quietly(tmp)
        return False
    if durability is Durability.DATA_DIR:
        _fsync_dir(os.path.dirname(path))
    return True


def _publish(tmp: str, path: str) -> bool:
    """Rename the finished temp file to `path`; False (nothing replaced) when a block is already there."""
    global _renameat2
    rename = _renameat2
    if rename is not None:
        if rename(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in _NOREPLACE_REFUSED:
            raise OSError(err, os.strerror(err), path)
        log.info("rename with RENAME_NOREPLACE refused (%s) under %s: stat + rename", os.strerror(err), path)
        _renameat2 = None
    if os.path.exists(path):
        return False
    try:
        os.rename(tmp, path)
    except FileExistsError:  # filesystems that refuse to replace: another writer won the race
        return False
    return True


def _open_temp(tmp: str, file_mode: int, direct: bool) -> tuple[int, bool]:
    """The temp file's descriptor, and whether it was opened with O_DIRECT (known from the open that worked,
    instead of an fcntl per store)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
    if direct and _O_DIRECT:
        flags |= _O_DIRECT
    try:
        fd = _open_creating_dirs(tmp, flags, file_mode)
    except OSError as exc:
        if not (flags & _O_DIRECT) or exc.errno != errno.EINVAL:
            raise
        _direct_fallback("open")
        flags &= ~_O_DIRECT
        fd = _open_creating_dirs(tmp, flags, file_mode)
    umask = _umask_value if _umask_value is not None else _umask()  # read once per process
    if file_mode & umask:
        os.fchmod(fd, file_mode)
    return fd, bool(flags & _O_DIRECT)


# A sweep of emptied directories that runs every few tens of microseconds (tests/kvfs/test_dir_reclaim.py's reaper,
# far harsher than an evictor, which tries a directory once it has stayed empty for min_age) wins most single
# mkdir-then-open attempts: 16 of them in a row were lost in 1-2% of the stores that made a directory.  A few
# hundred retries cost milliseconds only in such a race.
_DIR_RETRIES = 256


def _open_creating_dirs(tmp: str, flags: int, file_mode: int) -> int:
    """Open the temp file, creating its directories.  The evictor removes emptied bucket directories (rmdir,
    which only succeeds on an empty one), so a directory may vanish between our mkdir and open, or a parent
    between two mkdirs: ENOENT from either means "create again", a few times.  Once the temp file exists the
    directory is not empty and the rename into it cannot meet ENOENT.  New directories get their exact mode only
    then: a chmod between the mkdir and the open was one more step for an emptied-directory sweep to win."""
    mode = dir_mode_for(file_mode)
    for _ in range(_DIR_RETRIES):
        try:
            return os.open(tmp, flags, file_mode)
        except FileNotFoundError:
            pass
        try:
            made = makedirs(os.path.dirname(tmp), mode)
            fd = os.open(tmp, flags, file_mode)
        except FileNotFoundError:
            continue  # removed again before the temp file was in it
        if made and mode & _umask():
            try:
                for directory in made:
                    os.chmod(directory, mode)
            except OSError:
                os.close(fd)
                raise
        return fd
    return os.open(tmp, flags, file_mode)


def _write_block(
    fd: int, ident: BlockIdentity, view: memoryview, use_direct: bool, checksum: int | None = None
) -> None:
    """Write the payload at HEADER_SIZE piece by piece (hashing each piece just before it goes out, unless the
    caller gave its `checksum`), then the header at offset 0.  Header-last is safe: the file is an unpublished
    temp file until its rename."""
    nbytes = len(view)
    if use_direct and nbytes and not _is_aligned(view):
        _direct_fallback("unaligned_buffer")
        _set_direct(fd, False)
        use_direct = False
    # With O_DIRECT only whole pages go direct; the unaligned tail goes through the page cache.
    direct_end = nbytes // ALIGNMENT * ALIGNMENT if use_direct else 0
    if checksum is None and nbytes <= _piece_bytes():
        # One I/O piece: hashed whole, then header and payload in one system call (not payload, then header).
        checksum = payload_checksum(view)
    if checksum is not None:
        _write_known(fd, ident, view, checksum, use_direct, direct_end)
        return
    hasher = PieceHasher()
    piece = _piece_bytes()
    pos = 0
    while pos < direct_end:
        chunk = view[pos : min(pos + piece, direct_end)]
        hasher.update(chunk)
        try:
            _pwrite_all(fd, [chunk], HEADER_SIZE + pos)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _direct_fallback("write_einval")
            _set_direct(fd, False)
            use_direct = False
            direct_end = pos
            _pwrite_all(fd, [chunk], HEADER_SIZE + pos)
        pos += len(chunk)
    if use_direct:  # only a tail shorter than a page is left: hash it, header direct, tail through the cache
        tail = view[pos:]
        hasher.update(tail)
        hbuf = _tls_header_buffer()
        hbuf[:HEADER_SIZE] = encode_header(ident, nbytes, hasher.intdigest())
        _pwrite_all(fd, [memoryview(hbuf)[:HEADER_SIZE]], 0)
        if len(tail):
            _set_direct(fd, False)
            _pwrite_all(fd, [tail], HEADER_SIZE + pos)
        return
    while pos < nbytes:
        chunk = view[pos : pos + piece]
        hasher.update(chunk)
        _pwrite_all(fd, [chunk], HEADER_SIZE + pos)
        pos += len(chunk)
    _pwrite_all(fd, [memoryview(encode_header(ident, nbytes, hasher.intdigest()))], 0)


def _write_known(
    fd: int, ident: BlockIdentity, view: memoryview, checksum: int, use_direct: bool, direct_end: int
) -> None:
    """A payload whose checksum is known needs no pass through the CPU cache: header and payload go out in one
    system call (direct: header and whole pages, then any tail through the page cache)."""
    hbuf = _tls_header_buffer()
    hbuf[:HEADER_SIZE] = encode_header(ident, len(view), checksum)
    header = memoryview(hbuf)[:HEADER_SIZE]
    if use_direct and direct_end:
        try:
            _pwrite_all(fd, [header, view[:direct_end]], 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _direct_fallback("write_einval")
            _set_direct(fd, False)
            direct_end = 0
        if direct_end:
            if direct_end < len(view):
                _set_direct(fd, False)
                _pwrite_all(fd, [view[direct_end:]], HEADER_SIZE + direct_end)
            return
    elif use_direct:  # less than a page of payload: all of it through the page cache
        _set_direct(fd, False)
    _pwrite_all(fd, [header, view], 0)


class _NoHash:
    """Stands in for a hasher where the caller checks the payload itself (unverified loads)."""

    def update(self, buf: Buffer, /) -> None:
        pass

    def intdigest(self) -> int:
        return 0


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- load -----------------------------------------------------------------------------------------------------


def _miss(reason: MissReason) -> LoadResult:
    return LoadResult(False, reason, 0, None)


def load_block(
    path: str | os.PathLike[str],
    ident: BlockIdentity,
    out: Buffer | None = None,
    *,
    direct: bool = False,
    verify: bool = True,
) -> LoadResult:
    """Read and validate a block file; never raises for I/O or content problems (a counted miss instead).

    With `out` (a writable buffer at least as long as the payload) the payload lands in `out[:nbytes]` and
    `payload` is None; a block longer than `out` is BAD_HEADER (not the layout the caller expects).  Without
    `out` the payload is returned as bytes.

    `verify=False` (only with `out`) skips the payload checksum: the result is `ok` but not `verified`, and the
    caller must check the checksum itself and call `settle_load` before using the payload.  Nothing needs the
    payload in the CPU cache then, so it is read with one system call instead of piece by piece.
    """
    if not verify and out is None:
        raise ValueError("load_block: verify=False needs an `out` buffer")
    out_view = None
    if out is not None:
        out_view = _byte_view(out)
        if out_view.readonly:
            raise TypeError("load_block: `out` must be a writable buffer")
    use_direct = bool(direct and _O_DIRECT)
    native = nativeio.MODULE
    if native is not None and out_view is not None:
        return _load_native(native, path, ident, out_view, verify, use_direct)
    flags = os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | (_O_DIRECT if use_direct else 0))
        except OSError as exc:
            if not use_direct or exc.errno != errno.EINVAL:
                raise
            _direct_fallback("open")
            use_direct = False
            fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return _miss(MissReason.MISSING)
    except OSError:
        return _miss(MissReason.IO_ERROR)
    try:
        return _load_open(fd, ident, out_view, use_direct, verify)
    except (OSError, MemoryError):  # MemoryError: a payload too big for this process, even under the cap
        return _miss(MissReason.IO_ERROR)
    finally:
        os.close(fd)


def _load_native(
    native: ModuleType,
    path: str | os.PathLike[str],
    ident: BlockIdentity,
    out_view: memoryview,
    verify: bool,
    use_direct: bool,
) -> LoadResult:
    """load_block into `out` through the compiled path: open, type check, read and hash in one call without the
    GIL (kvfs.nativeio); the header is validated here, as on the Python path, with the same outcomes."""
    hview = memoryview(_tls_header_buffer())[:HEADER_SIZE]
    try:
        outcome, _err, size, got, digest, fallback = native.load(
            os.fsencode(path), hview, out_view, verify, HASH_PIECE_BYTES, NATIVE_PIECE_BYTES, use_direct
        )
    except ValueError:  # a path with a NUL byte: no such file
        return _miss(MissReason.MISSING)
    if fallback:
        _direct_fallback(_NATIVE_FALLBACKS[fallback])
    if outcome != nativeio.LOAD_OK:
        return _miss(_NATIVE_MISSES.get(outcome, MissReason.IO_ERROR))
    header = parse_header(hview[: min(got, HEADER_SIZE)])
    problem = _check_header(header, ident, size, len(out_view))
    if problem is not None:
        return _miss(problem)
    assert isinstance(header, BlockHeader)
    n = header.payload_len
    if got < HEADER_SIZE + n:  # the file shrank after its size was read
        return _miss(MissReason.TRUNCATED)
    if not verify:
        return LoadResult(True, None, n, None, verified=False, header=header)
    if header.checksum_algo != PIECES_ALGO_ID:  # a file from before algorithm 2
        digest = payload_checksum(out_view[:n], header.checksum_algo)
    if digest != header.payload_checksum:
        return _miss(MissReason.CHECKSUM_MISMATCH)
    return LoadResult(True, None, n, None, header=header)


_NATIVE_FALLBACKS: Final = {1: "open", 2: "unaligned_buffer", 3: "write_einval", 4: "read_einval"}
_NATIVE_MISSES: Final = {
    nativeio.LOAD_MISSING: MissReason.MISSING,
    nativeio.LOAD_NOT_REGULAR: MissReason.NOT_REGULAR,
}


def _load_open(
    fd: int,
    ident: BlockIdentity,
    out_view: memoryview | None,
    use_direct: bool,
    verify: bool = True,
) -> LoadResult:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return _miss(MissReason.NOT_REGULAR)
    size = st.st_size
    prefetched = 0
    if out_view is not None:
        # The header and the start of the payload in one read (with O_DIRECT, the whole payload: one I/O round
        # trip, which matters on network filesystems); the payload lands in `out` speculatively and is used once
        # the header validates.  Buffered loads read only the first piece so: the rest goes piece by piece,
        # each hashed right after it lands (still in cache); unverified loads read it all at once too.
        hview = memoryview(_tls_header_buffer())[:HEADER_SIZE]
        span = len(out_view)
        if use_direct:
            span = span // ALIGNMENT * ALIGNMENT if _is_aligned(out_view) else 0
        elif verify:
            span = min(span, _piece_bytes())
        got = _preadv_full(fd, [hview, out_view[:span]] if span else [hview], 0)
        prefetched = max(0, got - HEADER_SIZE)
        header = parse_header(hview[: min(got, HEADER_SIZE)])
    elif use_direct:
        hbuf = _tls_header_buffer()
        got = _pread_full(fd, memoryview(hbuf)[:HEADER_SIZE], 0)
        header = parse_header(memoryview(hbuf)[:got])
    else:
        header = parse_header(os.pread(fd, HEADER_SIZE, 0))
    problem = _check_header(header, ident, size, len(out_view) if out_view is not None else None)
    if problem is not None:
        return _miss(problem)
    assert isinstance(header, BlockHeader)
    n = header.payload_len
    payload: bytes | None = None
    if out_view is not None and not use_direct:
        digest = _read_hashed(fd, out_view, n, min(prefetched, n), header.checksum_algo if verify else None)
        if digest < 0:
            return _miss(MissReason.TRUNCATED)
        if not verify:
            return LoadResult(True, None, n, None, verified=False, header=header)
        if digest != header.payload_checksum:
            return _miss(MissReason.CHECKSUM_MISMATCH)
        return LoadResult(True, None, n, None, header=header)
    if out_view is not None:
        target = out_view
        if prefetched >= n:
            got = n
        else:
            got = prefetched + _read_payload(
                fd, target[prefetched:], n - prefetched, use_direct, HEADER_SIZE + prefetched
            )
    elif use_direct:
        scratch = aligned_buffer(n)
        target = memoryview(scratch)
        got = _read_payload(fd, target, n, use_direct)
    else:
        payload = os.pread(fd, n, HEADER_SIZE)
        while len(payload) < n:  # pread may return short on some filesystems
            more = os.pread(fd, n - len(payload), HEADER_SIZE + len(payload))
            if not more:
                break
            payload += more
        target = memoryview(payload)
        got = len(payload)
    if got < n:
        return _miss(MissReason.TRUNCATED)
    if not verify:
        return LoadResult(True, None, n, None, verified=False, header=header)
    if payload_checksum(target[:n], header.checksum_algo) != header.payload_checksum:
        return _miss(MissReason.CHECKSUM_MISMATCH)
    if payload is None and out_view is None:
        payload = bytes(target[:n])
    return LoadResult(True, None, n, payload, header=header)


def _check_header(
    header: BlockHeader | MissReason, ident: BlockIdentity, size: int, capacity: int | None
) -> MissReason | None:
    """Why a parsed header does not describe the block the reader expects in a file of `size` bytes (with a
    payload buffer of `capacity` bytes), or None."""
    if isinstance(header, MissReason):
        return header
    if header.fingerprint != ident.fingerprint:
        return MissReason.FINGERPRINT_MISMATCH
    if header.key != ident.key:
        return MissReason.KEY_MISMATCH
    n = header.payload_len
    if size < HEADER_SIZE + n:
        return MissReason.TRUNCATED
    if size > HEADER_SIZE + n:
        return MissReason.BAD_HEADER
    if capacity is not None and capacity < n:
        return MissReason.BAD_HEADER
    return None


def settle_load(result: LoadResult, checksum: int) -> LoadResult:
    """Finish a `load_block(..., verify=False)`: `checksum` is the caller's checksum of the payload, under the
    algorithm of `result.header`.  A verified hit, or a counted CHECKSUM_MISMATCH miss."""
    if result.verified or result.header is None or not result.ok:
        raise ValueError("settle_load: not an unverified load")
    if checksum != result.header.payload_checksum:
        return _miss(MissReason.CHECKSUM_MISMATCH)
    return LoadResult(True, None, result.nbytes, None, header=result.header)


def _read_hashed(
    fd: int,
    out_view: memoryview,
    n: int,
    prefetched: int,
    algo: int | None,
) -> int:
    """Read the payload into out_view[:n] piece by piece (the first `prefetched` bytes are already there),
    hashing each piece right after it lands under checksum algorithm `algo` (None: no hashing, returns 0); the
    checksum, or -1 when the file ends early."""
    hasher = payload_hasher(algo) if algo is not None else _NoHash()
    hasher.update(out_view[:prefetched])
    piece = _piece_bytes()
    pos = prefetched
    while pos < n:
        want = min(piece, n - pos)
        got = _pread_full(fd, out_view[pos : pos + want], HEADER_SIZE + pos)
        if got < want:
            return -1
        hasher.update(out_view[pos : pos + want])
        pos += want
    return hasher.intdigest()


def _read_payload(fd: int, target: memoryview, n: int, use_direct: bool, offset: int = HEADER_SIZE) -> int:
    """Read n payload bytes at `offset` into target[:n]; fewer only at end of file."""
    if not use_direct or n == 0:
        return _pread_full(fd, target[:n], offset)
    if not _is_aligned(target):
        _direct_fallback("unaligned_buffer")
        _set_direct(fd, False)
        return _pread_full(fd, target[:n], offset)
    rounded = _round_up(n)
    if len(target) >= rounded:  # the read stops at end of file, so reading the rounded length is exact
        return min(n, _pread_full(fd, target[:rounded], offset))
    aligned = n // ALIGNMENT * ALIGNMENT
    got = _pread_full(fd, target[:aligned], offset) if aligned else 0
    if got < aligned:
        return got
    _set_direct(fd, False)
    return got + _pread_full(fd, target[aligned:n], offset + aligned)


def _preadv_full(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill `views` from `offset` with as few preadv calls as the kernel allows; short only at end of file."""
    want = sum(map(len, views))
    total = os.preadv(fd, views, offset) if want else 0
    if total == want or total == 0:  # the usual case: all of it in one call (or nothing: end of file)
        return total
    pending = [v for v in views if len(v)]
    _advance(pending, total)
    while pending:
        n = os.preadv(fd, pending, offset + total)
        if n == 0:
            break
        total += n
        _advance(pending, n)
    return total


# --- inspection (verify, scan) --------------------------------------------------------------------------------


def _open_for_inspection(path: str | os.PathLike[str]) -> int | MissReason:
    """A read-only fd on a regular file (atime left alone where allowed), or why there is none."""
    flags = os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | _O_NOATIME)
        except PermissionError:
            if not _O_NOATIME:
                raise
            fd = os.open(path, flags)  # O_NOATIME needs ownership of the file
    except (FileNotFoundError, NotADirectoryError):
        return MissReason.MISSING
    except OSError:
        return MissReason.IO_ERROR
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        return MissReason.NOT_REGULAR
    return fd


def read_header(path: str | os.PathLike[str]) -> BlockHeader | MissReason:
    """The validated header of a block file, or why it is not one (not counted as a load miss)."""
    fd = _open_for_inspection(path)
    if isinstance(fd, MissReason):
        return fd
    try:
        return parse_header(os.pread(fd, HEADER_SIZE, 0))
    except OSError:
        return MissReason.IO_ERROR
    finally:
        os.close(fd)


def check_block_file(
    path: str | os.PathLike[str], expected_fingerprint: bytes | None = None
) -> MissReason | None:
    """Full check of one block file (header, length, payload checksum); None when it is sound.

    Streams the payload in 8 MiB chunks, so memory stays flat for any block size.
    """
    fd = _open_for_inspection(path)
    if isinstance(fd, MissReason):
        return fd
    try:
        header = parse_header(os.pread(fd, HEADER_SIZE, 0))
        if isinstance(header, MissReason):
            return header
        if expected_fingerprint is not None and header.fingerprint != expected_fingerprint:
            return MissReason.FINGERPRINT_MISMATCH
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE + header.payload_len:
            return MissReason.TRUNCATED
        if size > HEADER_SIZE + header.payload_len:
            return MissReason.BAD_HEADER
        hasher = payload_hasher(header.checksum_algo)
        offset, remaining = HEADER_SIZE, header.payload_len
        while remaining:
            chunk = os.pread(fd, min(remaining, _VERIFY_CHUNK), offset)
            if not chunk:
                return MissReason.TRUNCATED
            hasher.update(chunk)
            offset += len(chunk)
            remaining -= len(chunk)
        if hasher.intdigest() != header.payload_checksum:
            return MissReason.CHECKSUM_MISMATCH
        return None
    except OSError:
        return MissReason.IO_ERROR
    finally:
        os.close(fd)
