"""`slru` and `2q` replayed on an in-memory tier: the catalog replay's rules and the policies' order, without SQL.

The tier keeps what those policies read from the catalog: probation (`hits = 0`) and protected (`hits > 0`)
blocks, each in the catalog's LRU order (oldest first, deeper chain position first among the blocks of one
request), and for `2q` the ghosts of evicted blocks (`kvfs.catalog.ghosts`: a block stored again while its
ghost is remembered counts as used at the next pass; ghosts older than `horizon` recency spans are dropped).
A pass offers what `SegmentedLruPolicy.ordered` offers: probation beyond its share of what stays, then
protected blocks, then the rest of probation; the request just served is never offered.  It reproduces
`simulate_catalog_policy(..., policy="slru" | "2q")` block for block (tests/kvfs/test_replay_segmented.py).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from kvfs.policy.slru import PROBATION_SHARE as SLRU_SHARE
from kvfs.policy.twoq import HORIZON as TWOQ_HORIZON
from kvfs.policy.twoq import PROBATION_SHARE as TWOQ_SHARE
from kvfs.replay.sim import SimResult

Progress = Callable[[int], None]
# (last access, -chain position): the catalog's LRU key within a segment.
Key = tuple[float, int]


def _older_than(segment: OrderedDict[int, Key], now: float) -> Iterator[int]:
    for h, key in segment.items():
        if key[0] >= now:  # the request just served (and everything after it) is protected
            return
        yield h


def _insert_sorted(segment: OrderedDict[int, Key], items: list[tuple[Key, int]]) -> None:
    """Add blocks to an LRU-ordered segment at their place (they are recent: only the tail is reordered)."""
    items.sort()
    lowest = items[0][0]
    tail: list[tuple[Key, int]] = []
    while segment:
        h, key = next(reversed(segment.items()))
        if key <= lowest:
            break
        segment.popitem()
        tail.append((key, h))
    for key, h in heapq.merge(items, reversed(tail)):
        segment[h] = key


def simulate_segmented(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int = 0,
    *,
    share: float,
    ghosts: bool,
    horizon: float = TWOQ_HORIZON,
    progress: Progress | None = None,
) -> SimResult:
    """Hit blocks of segmented LRU with a probation `share` (with ghosts: 2Q) at `capacity` blocks."""
    probation: OrderedDict[int, Key] = OrderedDict()
    protected: OrderedDict[int, Key] = OrderedDict()
    history: dict[int, float] = {}  # ghost -> last access when evicted (the newest, as the upsert keeps)
    expiry: list[tuple[float, int]] = []  # (last seen, ghost): stale entries skipped
    restored: list[int] = []  # blocks stored since the last pass whose ghost was remembered
    target = max(0, capacity - slack)
    result = SimResult()
    for i, req in enumerate(requests):
        now = float(i + 1)
        result.count(_hits(req, probation, protected), len(req))
        for pos in range(len(req) - 1, -1, -1):  # deepest first: the head ends up most recent
            h = req[pos]
            key = (now, -pos)
            if h in protected:
                del protected[h]
                protected[h] = key
            elif h in probation:
                del probation[h]
                protected[h] = key
            else:
                probation[h] = key
                if h in history:
                    restored.append(h)
        if progress is not None:
            progress(1)
        total = len(probation) + len(protected)
        if total <= capacity:
            continue
        if ghosts:
            # revive(): new rows with an older ghost count as used; then ghosts beyond the horizon go.
            if restored:
                moved = [(probation.pop(h), h) for h in restored if h in probation]
                if moved:
                    _insert_sorted(protected, moved)
            restored.clear()
            oldest = min(seg[next(iter(seg))][0] for seg in (probation, protected) if seg)
            cutoff = now - horizon * (now - oldest)
            while expiry and expiry[0][0] < cutoff:
                last, h = heapq.heappop(expiry)
                if history.get(h) == last:
                    del history[h]
        need = total - target
        keep = max(0, total - need)
        surplus = len(probation) - int(share * keep)
        victims: list[int] = []
        young = _older_than(probation, now)
        if surplus > 0:
            for h in young:
                victims.append(h)
                if len(victims) >= min(surplus, need):
                    break
        if len(victims) < need:
            for h in _older_than(protected, now):
                victims.append(h)
                if len(victims) >= need:
                    break
        if len(victims) < need:
            for h in young:
                victims.append(h)
                if len(victims) >= need:
                    break
        for h in victims:
            key = probation.pop(h, None)
            if key is None:
                key = protected.pop(h)
            if ghosts:
                last = key[0]
                if history.get(h, -1.0) < last:
                    history[h] = last
                    heapq.heappush(expiry, (last, h))
        result.evicted += len(victims)
    return result


def _hits(req: Sequence[int], probation: dict[int, Key], protected: dict[int, Key]) -> int:
    n = 0
    for h in req:
        if h not in probation and h not in protected:
            break
        n += 1
    return n


def simulate_slru(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    return simulate_segmented(requests, capacity, slack, share=SLRU_SHARE, ghosts=False, progress=progress)


def simulate_2q(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    return simulate_segmented(requests, capacity, slack, share=TWOQ_SHARE, ghosts=True, progress=progress)
