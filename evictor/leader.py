"""Leader election: exactly one evictor enforces (and writes the catalog) per catalog.

* PostgreSQL: a lease row with a deadline on the server's clock (`kvfs.catalog.lease`), claimed over a
  dedicated connection (not from the catalog's pool).  Only the enforcement loop renews it (every pass and
  before every delete batch), so a leader that is stopped (SIGSTOP) or stuck (a hung NFS call) loses it after
  `leader_lease` (15 s) and a follower, retrying every `leader_retry`, takes over: within `leader_lease` +
  `leader_retry`.  A dead leader is noticed sooner: every instance holds an advisory lock keyed by its own id
  for as long as its session lives, and a follower that can take the holder's key claims at once (takeover
  within `leader_retry` after a crash; 11 s of TCP keepalive when the host vanishes).  A leader that cannot
  renew (lapsed, claimed by another, catalog unreachable) drops the batch it was about to delete.
* SQLite: the catalog is a local file; a second evictor on it is refused at start-up (an flock on
  `<real path of the catalog>.lock`, released by the kernel when the holder dies).  The real path, so a
  symlink to the file is the same catalog; a file with several hard links is refused outright (SQLite names
  its WAL and shared-memory files after the path it was given, so two names corrupt the database).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from evictor import metrics
from kvfs.catalog import lease

log = logging.getLogger("kvfs.evictor.leader")


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
        self.db_path = db_path
        # Resolved: every name of the file (through symlinks, in any directory spelling) locks the same file.
        self.lock_path = Path(f"{os.path.realpath(db_path)}.lock")
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            links = os.stat(self.db_path).st_nlink
        except FileNotFoundError:
            links = 1
        if links > 1:
            raise AlreadyRunningError(
                f"the SQLite catalog {self.db_path} has {links} hard links: another evictor may open it under "
                "another name, and SQLite's journal files would then differ (a corrupt catalog); remove the "
                "extra links"
            )
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


class PgLeaseElector(LeaderElector):
    """PostgreSQL: a lease row with a server-clock deadline (`kvfs.catalog.lease`), on a dedicated session.

    The leadership loop claims the lease (`try_acquire`) and checks it; only the enforcement loop renews it
    (`still_leader`, at the start of every pass and before every delete batch), so a leader whose enforcement
    hangs loses it within `lease_s` and a follower takes over."""

    def __init__(self, url: str, *, lease_s: float = 15.0, connect_timeout: float = 3.0) -> None:
        self.conninfo = lease.libpq_conninfo(url)
        self.lease_s = lease_s
        self.connect_timeout = connect_timeout
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._conn: Any = None
        self._mutex = threading.Lock()
        self._no_claim_until = 0.0

    def _connect(self) -> Any:
        return lease.connect(
            self.conninfo, holder=self.holder, lease_s=self.lease_s, connect_timeout=self.connect_timeout
        )

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone anyway
                self._conn.close()
            self._conn = None
        self._set(False)

    def _failed(self, exc: Exception) -> None:
        metrics.ERRORS.labels("leader").inc()
        self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("leader election: cannot reach the catalog: %s", self.last_error)
        self._drop()

    def try_acquire(self) -> bool:
        with self._mutex:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                if self.is_leader:
                    if not lease.holds(self._conn, self.holder):
                        # Lapsed: our enforcement loop stopped renewing (hung).  Leave the lease to a follower
                        # for one period rather than re-claiming it for a loop that may still be stuck.
                        log.warning("leader lease lapsed (enforcement did not renew it): stepping down")
                        self._no_claim_until = time.monotonic() + self.lease_s
                        self._set(False)
                elif time.monotonic() >= self._no_claim_until:
                    leading, _holder = lease.try_claim(self._conn, self.holder, self.lease_s)
                    self._set(leading)
            except Exception as exc:  # noqa: BLE001 - any DB failure: not leader, retried later
                self._failed(exc)
                return False
            self.last_error = None
            return self.is_leader

    def still_leader(self) -> bool:
        """Renew the lease (the enforcement loop calls this); False, and not leader any more, when it is lost."""
        with self._mutex:
            if not self.is_leader or self._conn is None:
                return False
            try:
                ok = lease.renew(self._conn, self.holder, self.lease_s)
            except Exception as exc:  # noqa: BLE001 - cannot prove we lead: we do not
                self._failed(exc)
                return False
            if not ok:
                log.warning("leader lease lost to another instance")
                self._set(False)
            return ok

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and self.is_leader:
                with contextlib.suppress(Exception):  # the lease lapses anyway
                    lease.release(self._conn, self.holder)
            self._drop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "holder": self.holder, "lease_s": self.lease_s}


def make_elector(catalog_url: str, *, lease_s: float = 15.0) -> LeaderElector:
    """A lease for PostgreSQL, a file lock next to a SQLite catalog; CatalogError for a bad URL."""
    backend, where = lease.locate(catalog_url)
    if backend == "postgresql":
        return PgLeaseElector(where, lease_s=lease_s)
    return FileLockElector(Path(where))
