"""Catalog URLs and engines: SQLite on local disk (WAL) by default, PostgreSQL (psycopg 3) by URL.

SQLite's locking relies on POSIX byte-range locks and a shared-memory WAL index, which are unreliable or
absent on network filesystems (NFS, Lustre, CephFS, SMB ...): two hosts can corrupt the database.  So a SQLite
catalog is refused inside the kvfs root and on a network filesystem; use PostgreSQL to share one catalog.
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from kvfs.catalog.errors import CatalogError

SQLITE_BUSY_TIMEOUT_S = 30.0
# Page cache per connection: keeps the hot part of the indexes of a ~1M-block catalog in memory.
SQLITE_CACHE_KIB = 65536
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "ceph",
        "fuse.ceph",
        "fuse.ceph-fuse",
        "cifs",
        "smb3",
        "smbfs",
        "glusterfs",
        "fuse.glusterfs",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "afs",
    }
)


def default_catalog_url() -> str:
    """`sqlite:///$XDG_STATE_HOME/kvfs/catalog.db` (default state home `~/.local/state`)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return f"sqlite:///{os.path.join(state, 'kvfs', 'catalog.db')}"


def parse_catalog_url(url: str) -> URL:
    """A SQLAlchemy URL; a bare path means SQLite; `postgresql://` means psycopg 3."""
    text = url.strip()
    if not text:
        raise CatalogError("empty catalog URL")
    if "://" not in text:
        return URL.create("sqlite", database=os.path.abspath(os.path.expanduser(text)))
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise CatalogError(f"malformed catalog URL {redact_url(text)!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise CatalogError(f"unsupported SQLite driver {parsed.drivername!r} (use sqlite:///path)")
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            raise CatalogError("a SQLite catalog needs a file path: sqlite:///path/to/catalog.db")
        if dict(parsed.query) not in ({}, {"mode": "ro"}):
            raise CatalogError(
                f"unsupported SQLite catalog URL options {dict(parsed.query)} (only ?mode=ro, read-only)"
            )
        return parsed.set(database=os.path.abspath(os.path.expanduser(parsed.database)))
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            return parsed.set(drivername="postgresql+psycopg")
        raise CatalogError(f"unsupported PostgreSQL driver {parsed.drivername!r} (use postgresql+psycopg://)")
    raise CatalogError(
        f"unsupported catalog URL scheme {parsed.drivername!r} (use sqlite:///path or postgresql://)"
    )


def filesystem_type(path: str) -> str | None:
    """fstype of the mount holding `path` (longest mount-point prefix in /proc/self/mountinfo), None if unknown."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    best, fstype = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, right.split()[0]
    return fstype


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_sqlite_location(db_path: str, root: str | os.PathLike[str] | None) -> None:
    """Refuse a SQLite file inside the kvfs root or on a network filesystem (see module doc)."""
    real = os.path.realpath(db_path)
    if root is not None:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
            raise CatalogError(
                f"SQLite catalog {db_path} is inside the kvfs root {root}: SQLite locking is unsafe on shared "
                "filesystems; put it on local disk or use PostgreSQL"
            )
    fstype = filesystem_type(str(_nearest_existing(Path(real))))
    if fstype in NETWORK_FILESYSTEMS:
        raise CatalogError(
            f"SQLite catalog {db_path} is on a {fstype} filesystem: SQLite locking is unsafe on network "
            "filesystems; put it on local disk or use PostgreSQL"
        )


def _sqlite_engine(url: URL) -> Engine:
    assert url.database is not None
    path = url.database
    read_only = url.query.get("mode") == "ro"
    if read_only:
        # `?mode=ro`: SQLite itself refuses every write (read commands on a catalog they must not change).
        def connect() -> sqlite3.Connection:
            uri = f"file:{urllib.parse.quote(path)}?mode=ro"
            return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)

        engine = create_engine(url.set(query={}), creator=connect)
    else:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"cannot create the catalog directory for {path}: {exc.strerror}") from exc
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Driver-level autocommit: we emit BEGIN ourselves (below), so write transactions can take the
        # write lock up front and wait on busy_timeout instead of failing with SQLITE_BUSY mid-transaction.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not read_only:  # a read-only connection reads the mode the file has (kvfs creates WAL files)
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("kvfs_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def create_catalog_engine(
    url: URL, *, root: str | os.PathLike[str] | None = None, create: bool = True
) -> Engine:
    """An engine that has connected once (so a bad URL or a dead server fails here, as CatalogError).

    `create=False` (read-only commands): a missing SQLite file is an error, not a new empty catalog."""
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        check_sqlite_location(url.database, root)
        if not create and not Path(url.database).exists():
            raise CatalogError(f"no catalog at {url.database}: run `kvfs scan` first, or pass --catalog")
        engine = _sqlite_engine(url)
    else:
        # TCP keepalives: a query to a server that vanished fails within ~25 s instead of hanging the caller
        # (no statement timeout here: usage and prune queries over a large catalog may rightly run long).
        try:
            engine = create_engine(
                url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": 10,
                    "keepalives": 1,
                    "keepalives_idle": 10,
                    "keepalives_interval": 5,
                    "keepalives_count": 3,
                },
            )
        except (
            ImportError
        ) as exc:  # the engine image installs no PostgreSQL driver (the `evictor` extra does)
            raise CatalogError(
                f"cannot open catalog {describe_url(url)}: its driver is not installed ({exc.name or exc}); "
                "install kvfs with the evictor extra (pip install '.[evictor]')"
            ) from None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        engine.dispose()
        raise CatalogError(f"cannot open catalog {describe_url(url)}: {_first_line(exc.orig)}") from exc
    return engine


def describe_url(url: URL) -> str:
    """A catalog URL as shown to people (logs, /status, errors): see `redact_url`."""
    return redact_url(url.render_as_string(hide_password=True))


# Query keys that carry a secret (libpq: password, sslpassword; a passfile names where one lives).
_SECRET_KEY = r"[^=&\s/?#]*(?:pass|secret|token)[^=&\s/?#]*"
_QUERY_SECRET_RE = re.compile(rf"([?&]{_SECRET_KEY}=)[^&\s#'\"]*", re.IGNORECASE)
_USERINFO_RE = re.compile(r"(://[^:/@\s'\"]*):[^@\s'\"]*@")


def redact_url(text: str) -> str:
    """`text` (a URL, or a message that contains URLs) with every password hidden: in `user:pw@` and in
    query parameters (`?password=`, `sslpassword=`, `passfile=`, any key holding pass/secret/token).  The one
    redaction used wherever a catalog URL is shown."""
    text = _USERINFO_RE.sub(r"\1:***@", text)
    return _QUERY_SECRET_RE.sub(r"\1***", text)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else "unknown error"
    return text.splitlines()[0] if text else type(exc).__name__
