"""Leader lease SQL (PostgreSQL): the `leases` row that says which evictor leads, with a deadline.

The deadline is what makes leadership safe against a *hung* leader (SIGSTOP, a hung NFS call): a session
advisory lock alone lives as long as the leader's TCP session, which the kernel keeps alive for a stopped
process, so followers waited forever.  Here the leader must renew `expires_at` (the server's clock, so
evictors' clocks do not matter) from its enforcement loop; a follower claims a lapsed lease.

Each instance also holds a session advisory lock on a key derived from its own holder id.  A follower that can
take the current holder's key knows that holder's session is gone (the process died): it claims the lease at
once instead of waiting for the deadline, which keeps takeover after a crash within one retry interval.

Functions take a psycopg connection in autocommit mode (the elector's dedicated session, never a pooled one).
"""

from __future__ import annotations

import hashlib
from typing import Any

LEASE_NAME = "kvfs-evictor-leader"

_NOW = "extract(epoch from clock_timestamp())"


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
