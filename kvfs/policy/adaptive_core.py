"""The adaptive default's decisions, apart from any storage: ARC's regret on prefix chains.

Order, from six LRU-ordered streams (oldest first, deeper chain position first on ties) and one number:

1. orphans (their parent is gone: never loadable), 2. superseded leaves (never read, their parent got a newer
child), as `prefix` does; 3. never-reused blocks (`fresh`) beyond `share` of what stays, oldest first;
4. the rest: fresh and reused blocks merged by last access (ties: deeper position first), i.e. LRU.

`share = 1` is LRU with the prefix rules; `share = 0` evicts every fresh block before any reused one (SLRU
with no probation); 2Q sits in between.  `share` is not a constant: it moves by ARC's rule on ghosts of both
kinds of victims.  A fresh ghost stored again says fresh blocks were evicted too early: `share` grows; a
reused ghost stored again says reused blocks were: it shrinks; each by one block of the tier, times the other
kind's ghost count over this kind's when that is larger (the rarer evidence counts more), as ARC moves `p`.
A block stored again while its ghost is remembered counts as reused (ARC's ghost hit goes to T2; 2Q's
re-store skips probation).  The share is clamped to [0, 1]; it starts at 2Q's share.

The catalog and the in-memory replay (`kvfs.replay.memory`) feed the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

# Where the share starts: 2Q's probation share (kvfs.policy.twoq), the classic that the replay suite finds
# best at small capacities; evidence moves it from there.  Replay suite (docs/policy.md), cells below 0.995x the
# best other policy: start 1 (LRU) and ghosts for 1 span 41; start 0.1 and 1 span 34; 0.1 and 3 spans 23.
SHARE_INITIAL = 0.1
# Ghosts are kept for this many recency spans (newest minus oldest last access in the tier), as 2q's
# (kvfs.policy.twoq.HORIZON), so one ghost store serves both.
HORIZON = 3.0


class Sized(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def last_access(self) -> float: ...
    @property
    def chain_pos(self) -> int: ...


T = TypeVar("T", bound=Sized)


def adapt(
    returned_fresh: int,
    returned_reused: int,
    ghosts_fresh: int,
    ghosts_reused: int,
    share: float,
    blocks: int,
) -> float:
    """The new share after `returned_*` ghosts of each kind were stored again since the last pass; `ghosts_*`:
    ghosts left of each kind; `blocks`: blocks in the tier (one block is one step, as ARC's `p` moves by one
    page)."""
    if not returned_fresh and not returned_reused:
        return share
    step = 1.0 / max(1, blocks)
    up = max(1.0, ghosts_reused / max(1, ghosts_fresh))
    down = max(1.0, ghosts_fresh / max(1, ghosts_reused))
    share += step * (returned_fresh * up - returned_reused * down)
    return min(1.0, max(0.0, share))


def fresh_surplus(fresh_bytes: int, total_bytes: int, need_bytes: int, share: float) -> int:
    """Bytes of never-reused blocks beyond `share` of what stays after the pass (protected blocks count)."""
    keep = max(0, total_bytes - need_bytes)
    return fresh_bytes - int(share * keep)


def order(
    orphans: Iterable[T], superseded: Iterable[T], fresh: Iterable[T], reused: Iterable[T], surplus: int
) -> Iterator[tuple[T, bool | None]]:
    """The eviction order (see the module).  Yields (block, was reused), None for orphans and superseded
    leaves (no regret: they leave no ghost)."""
    for item in orphans:
        yield item, None
    for item in superseded:
        yield item, None
    fresh_it = iter(fresh)
    taken = 0
    if surplus > 0:
        for item in fresh_it:
            yield item, False
            taken += item.size
            if taken >= surplus:
                break
    yield from merge_lru(fresh_it, reused)


def merge_lru(fresh: Iterable[T], reused: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Two LRU-ordered streams merged on (last access, deeper position first); ties: the reused block when it is
    deeper, else the fresh one (the order of `prefix` with no bonus)."""
    fresh_it, reused_it = iter(fresh), iter(reused)
    f = next(fresh_it, None)
    r = next(reused_it, None)
    while r is not None and f is not None:
        if r.last_access < f.last_access or (r.last_access == f.last_access and r.chain_pos > f.chain_pos):
            yield r, True
            r = next(reused_it, None)
        else:
            yield f, False
            f = next(fresh_it, None)
    if r is not None:
        yield r, True
        for item in reused_it:
            yield item, True
    if f is not None:
        yield f, False
        for item in fresh_it:
            yield item, False
