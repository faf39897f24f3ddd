"""`adaptive`'s choice of order by miniature simulation, apart from any storage.

No one order is best everywhere on the replay suite: the two-share order (kvfs.policy.adaptive_core) on
`rag` and most cells, S3-FIFO's (kvfs.policy.s3fifo_core) at 1–2% on `chat`, `sysprompt` and `sessions`,
2Q's fixed share on some Mooncake and `mixed` cells, `prefix`'s recency bonus on `sessions` at 5–10%.  So
`adaptive` runs each candidate order on a miniature of the tier (Waldspurger et al., "Cache Modeling and
Optimization using Miniature Simulations", USENIX ATC 2017; SHARDS's spatial sampling): a shadow tier per
candidate, fed the blocks whose key hashes below `rate` (`sampled`) and sized `rate` times the tier.  A
key is in or out of the sample everywhere it appears, so a sampled chain is a chain: the shadow serves each
request's sampled blocks with the same prefix rule.  The real tier orders its victims as the candidate whose
shadow hit most (`update`), with hysteresis.

Constants, chosen on the suite (docs/policy.md: cells below 0.995x the best other policy of 78, worst ratio),
none per trace:

* `SHADOW_BLOCKS`: the sample rate is `SHADOW_BLOCKS / capacity` (at most 1): shadows of a fixed size
  (SHARDS's fixed-size variant), so their cost does not grow with the tier.  On four draws (294 cells)
  1,000, 2,000, 4,000 blocks and full-size shadows left 25, 20, 19 and 20 cells below: a smaller sample
  delays the switches that pay where two orders are 1-2% apart (`mixed-3` 5%: 2Q from request 2,684 at a
  rate of 0.78, from 950 unsampled); a fixed rate of 0.25 (16–110-block shadows at 1%) let Mooncake 1% fall
  to 0.88x.
* `HYSTERESIS`: the leader takes over only when ahead of the current order by more than half a percent, the
  suite's own tolerance: a switch costs (the tier was shaped by the other order).  0, 0.5, 1, 2%: 11, 9, 12,
  12 below.
* `MEMORY`: scores decay with a time constant of that many tier capacities of requested blocks, so a change
  of workload is followed in the end, while noise is not: 4, 64, 256 capacities gave worst cells 0.88, 0.85,
  0.86 (each switch costs); 1,024 measured as never forgetting (9 below, worst 0.938).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SHADOW_BLOCKS = 4000
HYSTERESIS = 0.005
MEMORY = 1024.0

_MASK = (1 << 64) - 1


def sample_rate(capacity_blocks: int) -> float:
    """The fraction of keys the shadows see: shadows of about `SHADOW_BLOCKS` blocks, the whole trace for a
    smaller tier."""
    return min(1.0, SHADOW_BLOCKS / max(1, capacity_blocks))


def sampled(key: int, rate: float) -> bool:
    """Whether `key` is in the sample (a 64-bit mix of the key against `rate`: the same answer for a key
    wherever it appears, so chains stay chains)."""
    if rate >= 1.0:
        return True
    x = (key * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 29
    return (x & 0xFFFFFF) < rate * (1 << 24)


@dataclass(frozen=True, slots=True)
class Scores:
    """What persists between requests: each candidate's decayed shadow hits, and the order in use (an index)."""

    hits: tuple[float, ...]
    current: int = 0

    @classmethod
    def start(cls, candidates: int) -> Scores:
        """No evidence yet: the first candidate orders."""
        return cls((0.0,) * candidates, 0)


def update(scores: Scores, hits: Sequence[int], requested: int, capacity_blocks: int) -> Scores:
    """The scores after one request of `requested` blocks, on which the shadows hit `hits` (one count per
    candidate); the current order changes to the leader only if it is ahead by more than `HYSTERESIS`."""
    decay = math.exp(-requested / (MEMORY * max(1, capacity_blocks)))
    new = tuple(old * decay + h for old, h in zip(scores.hits, hits, strict=True))
    leader = max(range(len(new)), key=new.__getitem__)  # ties: the earlier candidate
    current = scores.current
    if new[leader] > new[current] * (1.0 + HYSTERESIS) + 1e-9:
        current = leader
    return Scores(new, current)
