"""Reference simulators of the replay (pure Python): Belady's farthest-next-use oracle, LRU and FIFO.

They share the replay's rules exactly (see `kvfs.replay.sim`): a request hits the leading run of its blocks
that are cached; then every block of it is stored or touched; when the cache holds more than `capacity`
blocks it is brought down to `capacity - slack`, never evicting a block of the request just served.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, defaultdict, deque
from collections.abc import Sequence

from kvfs.replay.sim import SimResult, leading_hits

Request = Sequence[int]


def simulate_belady(requests: Sequence[Request], capacity: int, slack: int = 0) -> SimResult:
    """Evict the cached block whose next use is farthest (never used again: first of all)."""
    never = len(requests) + 1
    uses: dict[int, deque[int]] = defaultdict(deque)
    for i, req in enumerate(requests):
        for h in req:
            if not uses[h] or uses[h][-1] != i:
                uses[h].append(i)
    next_use: dict[int, int] = {}
    heap: list[tuple[int, int]] = []  # (-next use, block); stale entries skipped on pop
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, next_use), len(req))
        for h in req:
            pending = uses[h]
            while pending and pending[0] <= i:
                pending.popleft()
            nxt = pending[0] if pending else never
            next_use[h] = nxt
            heapq.heappush(heap, (-nxt, h))
        if len(next_use) > capacity:
            current = set(req)
            target = max(0, capacity - slack)
            held: list[tuple[int, int]] = []
            while len(next_use) > target and heap:
                neg, h = heapq.heappop(heap)
                if next_use.get(h) != -neg:
                    continue
                if h in current:
                    held.append((neg, h))
                    continue
                del next_use[h]
                result.evicted += 1
            for item in held:
                heapq.heappush(heap, item)
    return result


def simulate_lru(requests: Sequence[Request], capacity: int, slack: int = 0) -> SimResult:
    """Least recently used; among blocks of one request the deeper chain position goes first (as `lru`)."""
    cache: OrderedDict[int, int] = OrderedDict()  # block -> request index of last use, oldest first
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, cache), len(req))
        for h in reversed(req):  # the head ends up most recent, the tail oldest
            cache[h] = i
            cache.move_to_end(h)
        if len(cache) > capacity:
            target = max(0, capacity - slack)
            while len(cache) > target:
                h, used = next(iter(cache.items()))
                if used == i:
                    break  # only the current request is left
                del cache[h]
                result.evicted += 1
    return result


def simulate_fifo(requests: Sequence[Request], capacity: int, slack: int = 0) -> SimResult:
    """First in, first out by store time (what deleting the oldest files in discovery order does)."""
    order: deque[int] = deque()  # blocks by creation, oldest first (deeper first within a request)
    last_use: dict[int, int] = {}
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, last_use), len(req))
        new = []
        for h in req:
            if h not in last_use:
                new.append(h)
            last_use[h] = i
        order.extend(reversed(list(dict.fromkeys(new))))
        if len(last_use) > capacity:
            target = max(0, capacity - slack)
            held: list[int] = []
            while len(last_use) > target and order:
                h = order.popleft()
                if last_use[h] == i:
                    held.append(h)
                    continue
                del last_use[h]
                result.evicted += 1
            order.extendleft(reversed(held))
    return result
