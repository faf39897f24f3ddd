"""Published scan-resistant policies replayed under the replay's rules: S3-FIFO and ARC.

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
