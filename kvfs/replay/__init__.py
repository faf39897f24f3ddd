"""`kvfs replay`: how many prefix blocks a policy would have served on a trace, against Belady, LRU and FIFO.

`replay(requests, capacity)` runs the chosen policy through the evictor's real code on a real catalog
(`catalog_replay`), LRU the same way, and Belady and FIFO as reference simulators (`baselines`), all under the
same rules: prefix hits, the same capacity, and the same eviction slack (a pass evicts down to
`capacity - slack`, as the evictor's watermarks do).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kvfs.policy import DEFAULT_POLICY
from kvfs.replay.baselines import simulate_belady, simulate_fifo, simulate_lru
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.sim import SimResult, leading_hits

__all__ = [
    "DEFAULT_SLACK_FRACTION",
    "ReplayResult",
    "SimResult",
    "leading_hits",
    "parse_capacity",
    "replay",
    "simulate_belady",
    "simulate_catalog_policy",
    "simulate_fifo",
    "simulate_lru",
    "unique_blocks",
]

# Each pass evicts down to capacity minus 1% (at least one block): passes run in batches, as in the evictor.
DEFAULT_SLACK_FRACTION = 0.01


@dataclass(frozen=True)
class ReplayResult:
    policy: str
    requests: int
    total_blocks: int
    unique_blocks: int
    capacity_blocks: int
    slack_blocks: int
    hit_ratio: float
    belady_hit_ratio: float
    lru_hit_ratio: float
    fifo_hit_ratio: float
    duration_s: float

    @property
    def vs_belady(self) -> float:
        return self.hit_ratio / self.belady_hit_ratio if self.belady_hit_ratio else 0.0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["vs_belady"] = round(self.vs_belady, 4)
        out["lru_vs_belady"] = (
            round(self.lru_hit_ratio / self.belady_hit_ratio, 4) if self.belady_hit_ratio else 0.0
        )
        return out


def unique_blocks(requests: Sequence[Sequence[int]]) -> int:
    return len({h for req in requests for h in req})


def parse_capacity(text: str, unique: int) -> int:
    """Blocks from `0.05` / `5%` (a fraction of the trace's unique blocks) or `2000` (blocks)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            fraction = float(value[:-1]) / 100.0
        elif "." in value or "e" in value.lower():
            fraction = float(value)
        else:
            blocks = int(value)
            if blocks < 1:
                raise ValueError
            return blocks
    except ValueError:
        raise ValueError(
            f"not a capacity: {text!r} (a fraction of the unique blocks like 0.05 or 5%, or a block count)"
        ) from None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"capacity fraction must be in (0, 1]: {text!r}")
    return max(1, int(fraction * unique))


def replay(
    requests: Sequence[Sequence[int]],
    capacity: int,
    *,
    policy: str | None = None,
    slack: int | None = None,
) -> ReplayResult:
    """Replay `requests` (each a list of prefix block ids) at `capacity` blocks under every policy compared."""
    if capacity < 1:
        raise ValueError(f"capacity must be at least one block: {capacity}")
    started = time.monotonic()
    policy = policy or DEFAULT_POLICY
    slack = max(1, int(capacity * DEFAULT_SLACK_FRACTION)) if slack is None else slack
    chosen = simulate_catalog_policy(requests, capacity, slack, policy=policy)
    lru = chosen if policy == "lru" else simulate_catalog_policy(requests, capacity, slack, policy="lru")
    belady = simulate_belady(requests, capacity, slack)
    fifo = simulate_fifo(requests, capacity, slack)
    return ReplayResult(
        policy=policy,
        requests=len(requests),
        total_blocks=chosen.total_blocks,
        unique_blocks=unique_blocks(requests),
        capacity_blocks=capacity,
        slack_blocks=slack,
        hit_ratio=chosen.hit_ratio,
        belady_hit_ratio=belady.hit_ratio,
        lru_hit_ratio=lru.hit_ratio,
        fifo_hit_ratio=fifo.hit_ratio,
        duration_s=round(time.monotonic() - started, 3),
    )
