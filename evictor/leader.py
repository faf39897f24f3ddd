"""Leader election: exactly one evictor enforces (and writes the catalog) per catalog.

* PostgreSQL: a session advisory lock held on a dedicated connection (not from the catalog's pool).  The
  server releases it the moment that session ends: at once when the leader process dies (the kernel closes
  its socket), and within the TCP keepalive bound (idle 5 s + 3 probes x 2 s = 11 s) when its host or network
  vanishes.  Followers retry every `leader_retry` seconds, so takeover after a crash takes at most
  `leader_retry` (+ 11 s when the old leader's host is unreachable).  The leader re-checks its session with a
  round trip before every delete batch and steps down when it fails, so a partitioned old leader stops
  deleting before a new one can start.
* SQLite: the catalog is a local file; a second evictor on it is refused at start-up (an fcntl lock on
  `<catalog>.lock`, released by the kernel when the holder dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from evictor import metrics

log = logging.getLogger("kvfs.evictor.leader")

# Advisory-lock key: one evictor leader per database.  Derived from a fixed name so every version agrees.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"kvfs-evictor-leader").digest()[:8], "big", signed=True)


class AlreadyRunningError(RuntimeError):
    """Another evictor holds this SQLite catalog."""


class LeaderElector(ABC):
    """`try_acquire()` is called periodically by followers; `still_leader()` by the leader before deleting."""

    is_leader: bool = False
    # Why the catalog could not be reached in the last election round (None: it answered).
    last_error: str | None = None

    @abstractmethod
    def try_acquire(self) -> bool: ...

    @abstractmethod
    def still_leader(self) -> bool: ...

    @abstractmethod
    def release(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "is_leader": self.is_leader}

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            metrics.LEADER_CHANGES.labels("gained" if leader else "lost").inc()
            log.info("leadership %s", "gained" if leader else "lost")
        self.is_leader = leader
        metrics.IS_LEADER.set(1 if leader else 0)


class FileLockElector(LeaderElector):
    """SQLite: the first instance is leader for its whole life; a second one refuses to start."""

    def __init__(self, db_path: Path) -> None:
        self.lock_path = Path(f"{db_path}.lock")
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunningError(
                f"another kvfs-evictor (pid {holder}) already runs on the SQLite catalog {self.lock_path.with_suffix('')}"
                "; SQLite catalogs allow one evictor (use PostgreSQL for several replicas)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        self._set(True)
        return True

    def still_leader(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._set(False)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lock": str(self.lock_path)}


def _libpq_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgAdvisoryElector(LeaderElector):
    """PostgreSQL: a session advisory lock on a dedicated autocommit connection."""

    def __init__(self, url: str, *, connect_timeout: float = 3.0) -> None:
        self.conninfo = _libpq_conninfo(url)
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._mutex = threading.Lock()

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(1, int(self.connect_timeout)),
            application_name="kvfs-evictor-leader",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        # Server side too: a vanished leader's session (and lock) is dropped within ~11 s.
        conn.execute("set tcp_keepalives_idle = 5")
        conn.execute("set tcp_keepalives_interval = 2")
        conn.execute("set tcp_keepalives_count = 3")
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone anyway
                self._conn.close()
            self._conn = None
        self._set(False)

    def try_acquire(self) -> bool:
        with self._mutex:
            if self.is_leader and self._alive():
                return True
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                row = self._conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            except Exception as exc:  # noqa: BLE001 - any DB failure: not leader, retried later
                metrics.ERRORS.labels("leader").inc()
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("leader election: cannot reach the catalog: %s", self.last_error)
                self._drop()
                return False
            self.last_error = None
            self._set(bool(row and row[0]))
            return self.is_leader

    def _alive(self) -> bool:
        try:
            self._conn.execute("select 1")
        except Exception as exc:  # noqa: BLE001 - the lock session is gone: so is the lock
            metrics.ERRORS.labels("leader").inc()
            log.warning(
                "leader session lost: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
            self._drop()
            return False
        return True

    def still_leader(self) -> bool:
        with self._mutex:
            return self.is_leader and self._conn is not None and self._alive()

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and self.is_leader:
                with contextlib.suppress(Exception):  # closing the session releases it anyway
                    self._conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
            self._drop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lock_key": LOCK_KEY}


def make_elector(catalog_url: str) -> LeaderElector:
    """Advisory lock for PostgreSQL, a file lock next to a SQLite catalog; CatalogError for a bad URL."""
    from kvfs.catalog import parse_catalog_url

    url = parse_catalog_url(catalog_url)
    if url.get_backend_name() == "postgresql":
        return PgAdvisoryElector(url.render_as_string(hide_password=False))
    return FileLockElector(Path(str(url.database)))
