"""The directory scheme shared by the connector, the evictor and the CLI.

Compatible with vLLM's ``FileMapper`` (and llm-d's FS connector, from which it came):

    <root>/<model>_<digest12>/config.json
    <root>/<model>_<digest12>[_r<rank>]/<hhh>/<hh>_g<group>/<hash>.<ext>

``ext`` is ``kvfs`` for kvfs block files (self-validating header) and ``bin`` for stock raw files.  kvfs
namespaces carry ``kvfs_format`` in their fingerprint fields, so their directory never equals a stock one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kvfs import metrics

log = logging.getLogger(__name__)

BlockFormat = Literal["kvfs", "bin"]
KVFS_FORMAT_VERSION = 1
CONFIG_FILENAME = "config.json"
META_DIRNAME = ".kvfs"
JOURNAL_DIRNAME = "journal"
TEMP_SUFFIX = ".tmp"
ROOT_ID_FILENAME = "root-id"  # <root>/.kvfs/root-id: which root a catalog belongs to (kvfs.catalog binds it)
DIGEST_LEN = 12

# Temp-file names: reseeded in a forked child, so parent and child never draw the same names.
_tmp_rng = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tmp_rng.seed)
_tmp_bits = _tmp_rng.getrandbits
_NS_RE = re.compile(r"^(?P<ns>[^/\x00]+_[0-9a-f]{12})(?:_r(?P<rank>\d+))?$")
# A namespace is a directory name: at most 255 bytes with its `_r<rank>` suffix (10 digits at most).
MAX_NAMESPACE_BYTES = 255 - 12
# config.json is a few hundred bytes; anything larger (or not a regular file) is refused, not read.
MAX_CONFIG_BYTES = 64 << 10
# The path components of a block file, `<hhh>/<hh>_g<g>/<hash>.<ext>`, matched with fullmatch; the tree walk
# (`kvfs.scan`) uses them one component at a time, `parse_block_relpath` all at once.
BUCKET1_RE = re.compile(r"[0-9a-f]{3}")
BUCKET2_RE = re.compile(r"(?P<b2>[0-9a-f]{2})_g(?P<group>\d+)")
HASH_RE = re.compile(r"[0-9a-f]{16,128}")
BLOCK_EXTS: dict[str, BlockFormat] = {"kvfs": "kvfs", "bin": "bin"}


def canonical_json(fields: Mapping[str, Any]) -> str:
    """The exact serialisation vLLM hashes: sorted keys, compact separators."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def fingerprint_sha256(fields: Mapping[str, Any]) -> bytes:
    """Full 32-byte digest of the fingerprint; kvfs block headers carry it."""
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).digest()


def namespace_name(fields: Mapping[str, Any]) -> str:
    """`<model with / replaced by _>_<sha256[:12]>`; `fields` must contain `model_name`."""
    model = str(fields["model_name"]).replace("/", "_")
    return f"{model}_{fingerprint_sha256(fields).hex()[:DIGEST_LEN]}"


def kvfs_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fingerprint fields of a kvfs-format namespace: the stock fields plus the format marker."""
    return {**fields, "kvfs_format": KVFS_FORMAT_VERSION}


@dataclass(frozen=True, slots=True)
class BlockKey:
    """Identity of one block file; `rank` is None for namespaces written without `_r<rank>`."""

    namespace: str
    rank: int | None
    group: int
    block_hash: str
    fmt: BlockFormat

    def relpath(self) -> str:
        rank_dir = self.namespace if self.rank is None else f"{self.namespace}_r{self.rank}"
        h = self.block_hash
        return f"{rank_dir}/{h[:3]}/{h[3:5]}_g{self.group}/{h}.{self.fmt}"


def parse_block_relpath(relpath: str) -> BlockKey | None:
    """Parse `<ns>[_r<rank>]/<hhh>/<hh>_g<g>/<hash>.<ext>`; None when the path is not a block file."""
    parts = relpath.split("/")
    if len(parts) != 4:
        return None
    ns_dir, bucket1, bucket2, name = parts
    ns_match = _NS_RE.match(ns_dir) if _utf8_name(ns_dir) else None
    b2_match = BUCKET2_RE.fullmatch(bucket2)
    block_hash, dot, ext = name.rpartition(".")
    fmt = BLOCK_EXTS.get(ext)
    if not (
        ns_match
        and b2_match
        and fmt
        and dot
        and HASH_RE.fullmatch(block_hash)
        and BUCKET1_RE.fullmatch(bucket1)
    ):
        return None
    if block_hash[:3] != bucket1 or block_hash[3:5] != b2_match["b2"]:
        return None
    rank = ns_match["rank"]
    return BlockKey(
        namespace=ns_match["ns"],
        rank=int(rank) if rank is not None else None,
        group=int(b2_match["group"]),
        block_hash=block_hash,
        fmt=fmt,
    )


def _utf8_name(name: str) -> bool:
    """False (and counted) for a file name whose bytes are not UTF-8."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        metrics.UNDECODABLE_NAMES.inc()
        return False
    return True


def parse_namespace_dir(name: str) -> tuple[str, int | None] | None:
    """`<ns>_r3` → (`<ns>`, 3); `<ns>` → (`<ns>`, None); anything else → None.

    A name that is not valid UTF-8 (os.scandir hands its bytes over as surrogate escapes) is no namespace: it
    could not be stored in the catalog or journaled, and one such directory used to fail every scan."""
    match = _NS_RE.match(name)
    if not match or not _utf8_name(name):
        return None
    rank = match["rank"]
    return match["ns"], int(rank) if rank is not None else None


def is_namespace_name(name: str) -> bool:
    """True when `name` can be a namespace: the layout's directory rule (`<model>_<digest12>`, no `/` or NUL),
    valid UTF-8, short enough for a directory with its rank suffix.  The one check for names that come from
    outside the tree (journal records): a name the catalog cannot store (PostgreSQL refuses NUL) or no
    directory can have is not a namespace."""
    if len(name) > MAX_NAMESPACE_BYTES or parse_namespace_dir(name) != (name, None):
        return False
    return len(name.encode("utf-8")) <= MAX_NAMESPACE_BYTES


def is_temp_name(name: str) -> bool:
    """Writers' in-flight files (`<final>_<random>.tmp`, vLLM's and ours); orphans once their writer died."""
    return name.endswith(TEMP_SUFFIX)


def temp_name_for(final_name: str) -> str:
    """A unique temp name in the final file's directory, so rename is atomic on every POSIX filesystem.  Only a
    suffix is added: given a path, the temp file's path in the same directory."""
    # 64 random bits from a private generator seeded by the OS (not `secrets`: a getrandom system call per store;
    # not the shared `random`, which engines seed alike).  Uniqueness is all they are for: O_EXCL refuses a clash.
    return f"{final_name}_{_tmp_bits(64):016x}{TEMP_SUFFIX}"


def model_of_namespace(namespace: str) -> str:
    """Model part of a namespace directory name (`/` was replaced by `_`; the digest dropped)."""
    return namespace[: -(DIGEST_LEN + 1)] if _NS_RE.match(namespace) else namespace


def journal_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / META_DIRNAME / JOURNAL_DIRNAME


DIR_MODE = 0o770  # directories of the tree and of .kvfs (README: files 0660, directories 0770)
ROOT_ID_MODE = 0o440  # written once, never rewritten: nobody needs to write it


def dir_mode_for(file_mode: int) -> int:
    """Directories get the file mode plus search (x) wherever it grants read: 0o660 -> 0o770."""
    return file_mode | ((file_mode & 0o444) >> 2)


def makedirs(directory: str, mode: int) -> list[str]:
    """mkdir -p; the directories it created, outermost first (their mode is `mode` less the umask: the caller
    gives them `mode` exactly where that matters).  The leaf is tried first: its parent usually exists, and a
    missing one answers ENOENT (one stat less per new leaf than checking the parent first).  A directory another
    writer made meanwhile is not counted: its mode is its creator's business."""
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return []
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if not parent or parent == directory:
            raise
        made = makedirs(parent, mode)
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            return made
        return [*made, directory]
    return [directory]


def makedirs_exact(directory: str | os.PathLike[str], mode: int = DIR_MODE) -> None:
    """mkdir -p where every directory this call creates gets exactly `mode`, whatever the umask: under umask
    077 a parent left 0700 (`.kvfs/` above the journal) shut out every other writer uid of the group, and under
    umask 000 it was 0777.  Existing directories are left as they are."""
    for path in makedirs(os.path.abspath(directory), mode):
        os.chmod(path, mode)


def write_namespace_config(
    root: str | os.PathLike[str], fields: Mapping[str, Any], *, file_mode: int = 0o660
) -> Path:
    """Create `<root>/<ns>/config.json` atomically (temp + rename) if absent; return its path."""
    ns_dir = Path(root) / namespace_name(fields)
    makedirs_exact(ns_dir, dir_mode_for(file_mode))
    path = ns_dir / CONFIG_FILENAME
    if path.exists():
        return path
    tmp = ns_dir / temp_name_for(CONFIG_FILENAME)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
    try:
        os.fchmod(fd, file_mode)  # the exact mode, whatever the process umask
        os.write(fd, json.dumps(dict(fields), sort_keys=True, indent=2).encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_namespace_config(root: str | os.PathLike[str], namespace: str) -> dict[str, Any] | None:
    """The fingerprint fields of a namespace, or None when config.json is absent, unreadable or refused.

    Anyone who can write the mount can put anything there, so the file is opened without following a symlink
    (neither the namespace directory nor the file), without blocking (a FIFO), only read when fstat says it is
    a regular file of at most MAX_CONFIG_BYTES, and parsed with every error caught (a deeply nested array
    raises RecursionError).  A refused file is counted (kvfs_namespace_configs_refused_total) and logged once
    per namespace and reason; the caller goes on without it."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        dir_fd = os.open(Path(root) / namespace, flags | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "not_regular" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else "unreadable"
        return _refuse_config(namespace, reason, exc.strerror or str(exc))
    try:
        fd = os.open(CONFIG_FILENAME, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "not_regular" if exc.errno == errno.ELOOP else "unreadable"  # a symlink
        return _refuse_config(namespace, reason, exc.strerror or str(exc))
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _refuse_config(namespace, "not_regular", "not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            return _refuse_config(namespace, "too_large", f"{st.st_size} bytes > {MAX_CONFIG_BYTES}")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_CONFIG_BYTES:  # the size may grow after fstat: never read past the cap
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_CONFIG_BYTES:
            return _refuse_config(namespace, "too_large", f"more than {MAX_CONFIG_BYTES} bytes")
    except OSError as exc:
        return _refuse_config(namespace, "unreadable", exc.strerror or str(exc))
    finally:
        os.close(fd)
    try:
        data = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _refuse_config(namespace, "not_json", type(exc).__name__)
    if not isinstance(data, dict):
        return _refuse_config(namespace, "not_json", "not a JSON object")
    return data


_config_warned: set[tuple[str, str]] = set()


def _refuse_config(namespace: str, reason: str, detail: str) -> dict[str, Any] | None:
    metrics.NAMESPACE_CONFIGS_REFUSED.labels(reason=reason).inc()
    if (namespace, reason) not in _config_warned and len(_config_warned) < 10_000:
        _config_warned.add((namespace, reason))
        log.warning(
            "%r/%s refused (%s: %s): namespace kept without its fields",
            namespace,
            CONFIG_FILENAME,
            reason,
            detail,
        )
    return None


def root_id_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / META_DIRNAME / ROOT_ID_FILENAME


def read_root_id(root: str | os.PathLike[str]) -> str | None:
    """The root's id, or None when it has none yet (or it cannot be read)."""
    try:
        text = root_id_path(root).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def ensure_root_id(root: str | os.PathLike[str]) -> str | None:
    """The root's id, created on first use (a random hex id); None when the root cannot take one (read-only).

    Created as a temp file then hard-linked into place, so concurrent first users agree on one id."""
    existing = read_root_id(root)
    if existing is not None:
        return existing
    path = root_id_path(root)
    tmp = path.with_name(temp_name_for(path.name))
    try:
        makedirs_exact(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), ROOT_ID_MODE)
        try:
            os.fchmod(fd, ROOT_ID_MODE)  # exactly, whatever the umask (0666 under umask 000)
            os.write(fd, (secrets.token_hex(16) + "\n").encode("ascii"))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: use its id
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return None
    return read_root_id(root)
