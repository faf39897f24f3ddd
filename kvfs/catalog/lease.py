"""Leader lease SQL (PostgreSQL): the `leases` row that says which evictor leads, with a deadline.

The deadline is what makes leadership safe against a *hung* leader (SIGSTOP, a hung NFS call): a session
advisory lock alone lives as long as the leader's TCP session, which the kernel keeps alive for a stopped
process, so followers waited forever.  Here the leader must renew `expires_at` (the server's clock, so
evictors' clocks do not matter) from its enforcement loop; a follower claims a lapsed lease.

Each instance also holds a session advisory lock on a key derived from its own holder id.  A follower that can
take the current holder's key knows that holder's session is gone (the process died): it claims the lease at
once instead of waiting for the deadline, which keeps takeover after a crash within one retry interval.

Functions take a psycopg connection in autocommit mode (the elector's dedicated session, never a pooled one),
which `connect` opens and sets up.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from kvfs.catalog.engine import parse_catalog_url

LEASE_NAME = "kvfs-evictor-leader"

_NOW = "extract(epoch from clock_timestamp())"


def locate(catalog_url: str) -> tuple[Literal["sqlite", "postgresql"], str]:
    """("postgresql", the URL with its password) or ("sqlite", the database file): what leader election
    needs to know of a catalog URL.  CatalogError for a bad URL."""
    url = parse_catalog_url(catalog_url)
    if url.get_backend_name() == "postgresql":
        return "postgresql", url.render_as_string(hide_password=False)
    return "sqlite", str(url.database)


def libpq_conninfo(url: str) -> str:
    """A PostgreSQL catalog URL as libpq takes it (psycopg.connect: no SQLAlchemy driver name)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def connect(conninfo: str, *, holder: str, lease_s: float, connect_timeout: float) -> Any:
    """The elector's dedicated session: autocommit, keepalives both ways, a statement timeout below the lease,
    and the liveness lock of `holder` taken."""
    import psycopg

    conn = psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=max(1, int(connect_timeout)),
        application_name="kvfs-evictor-leader",
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
    # Server side too: a vanished instance's session (and its liveness lock) is dropped within ~11 s.
    conn.execute("set tcp_keepalives_idle = 5")
    conn.execute("set tcp_keepalives_interval = 2")
    conn.execute("set tcp_keepalives_count = 3")
    # A statement stuck on the server (locks, I/O) must not outlive the lease it is meant to keep.
    conn.execute(f"set statement_timeout = {max(1, int(lease_s * 1000 / 3))}")
    hold_liveness_lock(conn, holder)
    return conn


def holder_key(holder: str) -> int:
    """The advisory-lock key an instance holds for as long as its session lives."""
    return int.from_bytes(hashlib.sha256(b"kvfs-evictor:" + holder.encode()).digest()[:8], "big", signed=True)


def hold_liveness_lock(conn: Any, holder: str) -> None:
    conn.execute("select pg_advisory_lock(%s)", (holder_key(holder),))


def _holder_alive(conn: Any, holder: str) -> bool:
    key = holder_key(holder)
    row = conn.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()
    if row and row[0]:
        conn.execute("select pg_advisory_unlock(%s)", (key,))
        return False
    return True


def try_claim(conn: Any, holder: str, lease_s: float) -> tuple[bool, str | None]:
    """Become (or stay) the lease holder when it is free, lapsed, ours, or its holder's session is gone.

    Returns (leading, current holder).  Ours already: renews it (a follower-turned-leader's first renewal)."""
    with conn.transaction():
        conn.execute(
            "insert into leases (name, holder, expires_at) values (%s, '', 0) on conflict (name) do nothing",
            (LEASE_NAME,),
        )
        holder_now, expires_at, now = conn.execute(
            f"select holder, expires_at, {_NOW} from leases where name = %s for update", (LEASE_NAME,)
        ).fetchone()
        if holder_now != holder and holder_now and expires_at > now and _holder_alive(conn, holder_now):
            return False, holder_now
        conn.execute(
            f"update leases set holder = %s, expires_at = {_NOW} + %s where name = %s",
            (holder, lease_s, LEASE_NAME),
        )
        return True, holder


def renew(conn: Any, holder: str, lease_s: float) -> bool:
    """Extend our lease; False when it is no longer ours (lapsed and claimed by another instance)."""
    row = conn.execute(
        f"update leases set expires_at = {_NOW} + %s where name = %s and holder = %s "
        f"and expires_at > {_NOW} returning 1",
        (lease_s, LEASE_NAME, holder),
    ).fetchone()
    return row is not None


def holds(conn: Any, holder: str) -> bool:
    """Whether we hold an unexpired lease (read only: renewal is the enforcement loop's job)."""
    row = conn.execute(
        f"select 1 from leases where name = %s and holder = %s and expires_at > {_NOW}", (LEASE_NAME, holder)
    ).fetchone()
    return row is not None


def release(conn: Any, holder: str) -> None:
    """Give the lease up at once (clean shutdown, step-down): a follower need not wait for the deadline."""
    conn.execute("update leases set expires_at = 0 where name = %s and holder = %s", (LEASE_NAME, holder))
