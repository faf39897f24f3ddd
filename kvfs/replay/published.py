"""Published scan-resistant policies replayed under the replay's rules: S3-FIFO, ARC and W-TinyLFU.

They are the references the default is measured against (issue 22), as their papers define them, with the
replay's rules: a request hits the leading run of its cached blocks, then every block is stored or touched
(deepest first, so that a chain's tail is always older than its head and goes first on ties, as in every
shipped policy); a pass runs when the tier holds more than `capacity` blocks and brings it down to
`capacity - slack`; the request just served is never evicted (a block of it met at the end of a queue is
set aside and put back where it was).  Sizes are in blocks (one block, one unit).

* S3-FIFO (Yang et al., SOSP 2023): a small FIFO of 10% of the capacity for new blocks, a main FIFO, ghosts
  of blocks evicted from the small queue (as many as the main queue holds); a use sets a 2-bit frequency.
  A block leaving the small queue moves to main if it was used there, else becomes a ghost; a block stored
  again while a ghost goes straight to main.  Main is a CLOCK: a block with frequency > 0 is put back at the
  head with its frequency less one.
* ARC (Megiddo and Modha, FAST 2003): T1 (blocks used once) and T2 (used at least twice) in LRU order, their
  ghosts B1 and B2, and a target size `p` of T1 moved by each ghost hit: +max(1, |B2|/|B1|) for a B1 hit,
  -max(1, |B1|/|B2|) for a B2 hit; a ghost hit goes to T2.  A victim comes from T1 while T1 exceeds `p`,
  else from T2; |T1| + |B1| <= c and all four lists <= 2c.
* W-TinyLFU (Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM ToS
  2017; Caffeine's before its window adapted): new blocks enter an LRU window of 1% of the capacity; what
  leaves the window is admitted to the main SLRU (probation, then protected, 80% of main) only if its
  frequency is higher than that of the victim main would give up (probation's oldest), else it is the
  victim.  Every use and store counts (4-bit counters, all halved after 10 x capacity counts).  The counts
  are exact here, an idealised sketch: no collisions, so it never admits a block by another's count.  While
  main has room, what leaves the window moves to probation without a contest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from kvfs.replay.sim import SimResult, leading_hits

Progress = Callable[[int], None]

S3FIFO_SMALL = 0.1  # the paper's small-queue share
S3FIFO_MAX_FREQ = 3


def simulate_s3fifo(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    small: deque[int] = deque()  # oldest at the left
    main: deque[int] = deque()
    freq: dict[int, int] = {}  # cached block -> frequency
    where: dict[int, bool] = {}  # cached block -> in main
    used_at: dict[int, int] = {}  # cached block -> request index of last use
    ghosts: OrderedDict[int, None] = OrderedDict()
    small_target = max(1, int(S3FIFO_SMALL * capacity))
    target = max(0, capacity - slack)
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, where), len(req))
        for pos in range(len(req) - 1, -1, -1):
            h = req[pos]
            if h in where:
                freq[h] = min(S3FIFO_MAX_FREQ, freq[h] + 1)
            elif h in ghosts:
                del ghosts[h]
                where[h] = True
                freq[h] = 0
                main.append(h)
            else:
                where[h] = False
                freq[h] = 0
                small.append(h)
            used_at[h] = i
        if progress is not None:
            progress(1)
        if len(where) <= capacity:
            continue
        held_small: list[int] = []
        held_main: list[int] = []
        while len(where) > target and (small or main):
            if small and (len(small) >= small_target or not main):
                h = small.popleft()
                if freq[h] > 0:
                    where[h] = True
                    freq[h] = 0
                    main.append(h)
                    continue
                if used_at[h] == i:
                    held_small.append(h)
                    continue
                del where[h], freq[h], used_at[h]
                ghosts[h] = None
                while len(ghosts) > max(1, capacity - small_target):
                    ghosts.popitem(last=False)
            else:
                h = main.popleft()
                if used_at[h] == i:
                    held_main.append(h)
                    continue
                if freq[h] > 0:
                    freq[h] -= 1
                    main.append(h)
                    continue
                del where[h], freq[h], used_at[h]
            result.evicted += 1
        small.extendleft(reversed(held_small))
        main.extendleft(reversed(held_main))
    return result


def simulate_arc(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    t1: OrderedDict[int, int] = OrderedDict()  # block -> request index of last use, LRU first
    t2: OrderedDict[int, int] = OrderedDict()
    b1: OrderedDict[int, None] = OrderedDict()
    b2: OrderedDict[int, None] = OrderedDict()
    p = 0.0
    c = capacity
    target = max(0, capacity - slack)
    result = SimResult()
    for i, req in enumerate(requests):
        n = 0
        for h in req:
            if h not in t1 and h not in t2:
                break
            n += 1
        result.count(n, len(req))
        for pos in range(len(req) - 1, -1, -1):
            h = req[pos]
            if h in t2:
                del t2[h]
            elif h in t1:
                del t1[h]
            elif h in b1:
                p = min(float(c), p + max(1.0, len(b2) / len(b1)))
                del b1[h]
            elif h in b2:
                p = max(0.0, p - max(1.0, len(b1) / len(b2)))
                del b2[h]
            else:
                t1[h] = i
                continue
            t2[h] = i
        if progress is not None:
            progress(1)
        size = len(t1) + len(t2)
        if size <= capacity:
            continue
        need = size - target
        while need > 0:
            # replace(): from T1 while it exceeds p (or T2 has nothing left to give), else from T2.
            src, ghost = (t1, b1) if len(t1) > p else (t2, b2)
            h, used = next(iter(src.items()), (None, i))
            if used == i:  # that list holds only the request just served
                src, ghost = (t2, b2) if src is t1 else (t1, b1)
                h, used = next(iter(src.items()), (None, i))
                if used == i:
                    break
            del src[h]
            ghost[h] = None
            need -= 1
            result.evicted += 1
        while b1 and len(t1) + len(b1) > c:
            b1.popitem(last=False)
        while b2 and len(t1) + len(t2) + len(b1) + len(b2) > 2 * c:
            b2.popitem(last=False)
    return result


WTINYLFU_WINDOW = 0.01  # the paper's window share
WTINYLFU_PROTECTED = 0.8  # of main
WTINYLFU_MAX_FREQ = 15  # 4-bit counters
WTINYLFU_RESET = 10  # counts (x capacity) between halvings


def simulate_wtinylfu(
    requests: Sequence[Sequence[int]], capacity: int, slack: int = 0, *, progress: Progress | None = None
) -> SimResult:
    window: OrderedDict[int, int] = OrderedDict()  # block -> request index of last use, LRU first
    probation: OrderedDict[int, int] = OrderedDict()
    protected: OrderedDict[int, int] = OrderedDict()
    where: dict[int, OrderedDict[int, int]] = {}  # cached block -> its list
    freq: dict[int, int] = {}
    counted = 0
    window_max = max(1, round(WTINYLFU_WINDOW * capacity))
    main_max = max(1, capacity - window_max)
    protected_max = int(WTINYLFU_PROTECTED * main_max)
    target = max(0, capacity - slack)
    result = SimResult()
    for i, req in enumerate(requests):
        result.count(leading_hits(req, where), len(req))
        for pos in range(len(req) - 1, -1, -1):
            h = req[pos]
            freq[h] = min(WTINYLFU_MAX_FREQ, freq.get(h, 0) + 1)
            counted += 1
            if counted >= WTINYLFU_RESET * capacity:
                counted //= 2
                freq = {k: v // 2 for k, v in freq.items() if v > 1}
            src = where.get(h)
            if src is probation:
                del probation[h]
                protected[h] = i
                where[h] = protected
                while len(protected) > protected_max:
                    k, v = protected.popitem(last=False)
                    probation[k] = v
                    where[k] = probation
            elif src is not None:
                src[h] = i
                src.move_to_end(h)
            else:
                window[h] = i
                where[h] = window
        while len(window) > window_max and len(probation) + len(protected) < main_max:
            k, v = window.popitem(last=False)
            probation[k] = v
            where[k] = probation
        if progress is not None:
            progress(1)
        if len(where) <= capacity:
            continue
        held: list[tuple[OrderedDict[int, int], int]] = []
        while len(where) > target:
            candidate = _oldest(window, i, held) if len(window) > window_max else None
            victim = _oldest(probation, i, held)
            if victim is None:
                victim = _oldest(protected, i, held)
            if candidate is not None and victim is not None:
                if freq.get(candidate, 0) > freq.get(victim, 0):  # admitted: main's victim goes instead
                    main = where[victim]
                    del main[victim], where[victim]
                    probation[candidate] = window.pop(candidate)
                    where[candidate] = probation
                else:
                    del window[candidate], where[candidate]
            elif candidate is not None or victim is not None:
                h = candidate if candidate is not None else victim
                del where[h][h], where[h]
            else:
                h = _oldest(window, i, held)
                if h is None:
                    break
                del window[h], where[h]
            result.evicted += 1
        for queue, k in reversed(held):
            queue[k] = i
            queue.move_to_end(k, last=False)
    return result


def _oldest(
    queue: OrderedDict[int, int], now: int, held: list[tuple[OrderedDict[int, int], int]]
) -> int | None:
    """The oldest block of `queue` not used by request `now` (those are set aside in `held`, to be put
    back)."""
    while queue:
        k, used = next(iter(queue.items()))
        if used != now:
            return k
        del queue[k]
        held.append((queue, k))
    return None
