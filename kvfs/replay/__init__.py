"""`kvfs replay`: how many prefix blocks a policy would have served on a trace, against Belady, LRU and FIFO.

`replay(requests, capacity)` runs the chosen policies and the baselines under the same rules: prefix hits, the
same capacity, and the same eviction slack (a pass evicts down to `capacity - slack`, as the evictor's
watermarks do).  How each runs (`simulate_policy`): every policy in memory through its own order (`IN_MEMORY`:
`prefix` on the chain tier of `memory`, `s3fifo` on it in `s3fifo`, `slru` and `2q` in `segmented`, `lru` by
the reference simulator, each identical to its catalog replay block for block; the adaptive default on that
chain tier with its shadows (`chooser`); ARC and W-TinyLFU, replay-only references, in `published`), Belady
and FIFO as reference simulators (`baselines`); `through_catalog=True` replays the registered policies through
the evictor's real planner on a scratch catalog (`catalog_replay`).

`belady_prefix_hit_ratio(requests, capacity_blocks)` answers the one question the end-to-end benchmark needs:
the prefix-hit ratio Belady reaches on a request sequence of block hashes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field

from kvfs.policy import DEFAULT_POLICY, available_policies, get_policy
from kvfs.replay.baselines import simulate_belady, simulate_fifo, simulate_lru
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.chooser import simulate_adaptive
from kvfs.replay.memory import simulate_prefix
from kvfs.replay.published import simulate_arc, simulate_wtinylfu
from kvfs.replay.s3fifo import simulate_s3fifo_chains
from kvfs.replay.segmented import simulate_2q, simulate_slru
from kvfs.replay.sim import SimResult, leading_hits

__all__ = [
    "DEFAULT_SLACK_FRACTION",
    "ReplayResult",
    "SimResult",
    "belady_prefix_hit_ratio",
    "leading_hits",
    "parse_capacity",
    "replay",
    "resolve_policies",
    "simulate_belady",
    "simulate_catalog_policy",
    "simulate_fifo",
    "simulate_lru",
    "simulate_policy",
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
    # Every policy replayed (the first is `policy`): name -> hit ratio.
    policies: dict[str, float] = field(default_factory=dict)

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


Progress = Callable[[int], None]


def simulate_policy(
    requests: Sequence[Sequence[int]],
    capacity: int,
    slack: int,
    policy: str,
    *,
    through_catalog: bool = False,
    progress: Progress | None = None,
) -> SimResult:
    """Replay one policy (registered, or replay-only: `REPLAY_ONLY`); `progress(n)` is told of every n requests
    done."""
    if policy in REPLAY_ONLY and through_catalog:
        raise ValueError(f"{policy!r} has no catalog version yet: it replays in memory only")
    if not through_catalog and policy in IN_MEMORY:
        return IN_MEMORY[policy](requests, capacity, slack, progress=progress)
    return simulate_catalog_policy(requests, capacity, slack, policy=policy, progress=progress)


def _lru(
    requests: Sequence[Sequence[int]], capacity: int, slack: int, *, progress: Progress | None = None
) -> SimResult:
    result = simulate_lru(requests, capacity, slack)
    if progress is not None:
        progress(len(requests))
    return result


# Every policy replays in memory, through its own order on an in-memory tier: `prefix` (kvfs.replay.memory),
# `adaptive` (kvfs.replay.chooser), `slru` and `2q` (kvfs.replay.segmented), `lru` by the reference simulator; the
# catalog policies are checked against their catalog replay block for block (tests/kvfs/test_replay_memory.py,
# test_replay_segmented.py).
IN_MEMORY: dict[str, Callable[..., SimResult]] = {
    "prefix": simulate_prefix,
    "lru": _lru,
    "slru": simulate_slru,
    "2q": simulate_2q,
    "adaptive": simulate_adaptive,
    "s3fifo": simulate_s3fifo_chains,
    "arc": simulate_arc,
    "wtinylfu": simulate_wtinylfu,
}
# Compared by the replay, with no catalog version: the published references ARC and W-TinyLFU
# (kvfs.replay.published: W-TinyLFU's admission by frequency loses on prefix traffic, above the best other
# policy in no suite cell, so no order in the product uses it: docs/policy.md; the published S3-FIFO there is
# a test reference: `s3fifo` is a catalog policy, replayed with the prefix rules by
# kvfs.replay.s3fifo).  `adaptive` is a catalog policy too (kvfs.policy.adaptive), replayed in memory by
# kvfs.replay.chooser.
REPLAY_ONLY = ("arc", "wtinylfu")
FAST_POLICIES = frozenset(IN_MEMORY)


def resolve_policies(names: Sequence[str | None]) -> list[str]:
    """Policy names as the replay runs them: `None` is the evictor's default, `all` every registered policy
    and every replay-only one; unknown names raise `kvfs.policy.UnknownPolicyError`."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [*available_policies(), *REPLAY_ONLY]
        elif name in REPLAY_ONLY:
            out.append(name)
        else:
            out.append(get_policy(name).name)
    return list(dict.fromkeys(out))


def replay(
    requests: Sequence[Sequence[int]],
    capacity: int,
    *,
    policy: str | Sequence[str] | None = None,
    slack: int | None = None,
    through_catalog: bool = False,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay `requests` (each a list of prefix block ids) at `capacity` blocks under every policy compared.

    `policy`: one name or several (the first is the result's `policy`); default: the evictor's default.
    Unknown names raise `kvfs.policy.UnknownPolicyError` before anything runs."""
    if capacity < 1:
        raise ValueError(f"capacity must be at least one block: {capacity}")
    started = time.monotonic()
    names = [policy or DEFAULT_POLICY] if policy is None or isinstance(policy, str) else list(policy)
    names = resolve_policies(names or [DEFAULT_POLICY])
    slack = max(1, int(capacity * DEFAULT_SLACK_FRACTION)) if slack is None else slack
    ratios: dict[str, float] = {}
    chosen: SimResult | None = None
    for name in [*names, *(["lru"] if "lru" not in names else [])]:
        sim = simulate_policy(
            requests, capacity, slack, name, through_catalog=through_catalog, progress=progress
        )
        chosen = sim if chosen is None else chosen
        ratios[name] = sim.hit_ratio
    assert chosen is not None
    belady = simulate_belady(requests, capacity, slack)
    if progress is not None:
        progress(len(requests))
    fifo = simulate_fifo(requests, capacity, slack)
    if progress is not None:
        progress(len(requests))
    return ReplayResult(
        policy=names[0],
        requests=len(requests),
        total_blocks=chosen.total_blocks,
        unique_blocks=unique_blocks(requests),
        capacity_blocks=capacity,
        slack_blocks=slack,
        hit_ratio=ratios[names[0]],
        belady_hit_ratio=belady.hit_ratio,
        lru_hit_ratio=ratios["lru"],
        fifo_hit_ratio=fifo.hit_ratio,
        duration_s=round(time.monotonic() - started, 3),
        policies={name: ratios[name] for name in names},
    )


def replay_steps(policies: Sequence[str]) -> int:
    """How many simulations `replay` runs for `policies` (for sizing a progress bar in requests)."""
    names = resolve_policies(policies)
    return len(names) + (0 if "lru" in names else 1) + 2


def belady_prefix_hit_ratio(
    requests: Sequence[Sequence[Hashable]], capacity_blocks: int, slack_blocks: int = 0
) -> float:
    """The prefix-hit ratio Belady (farthest next use) reaches on `requests` with a tier of `capacity_blocks`.

    `requests`: one list of block hashes (any hashable, e.g. str) per request, in prefix order.  Same rules as
    `kvfs replay`: a request hits the leading run of its cached blocks, then all its blocks are cached; over
    capacity the tier is brought down to `capacity_blocks - slack_blocks`, never evicting a block of the
    request just served.  Hit ratio = hit blocks / requested blocks (0.0 for no blocks)."""
    if capacity_blocks < 1:
        raise ValueError(f"capacity must be at least one block: {capacity_blocks}")
    ids: dict[Hashable, int] = {}
    numbered = [[ids.setdefault(h, len(ids)) for h in req] for req in requests]
    return simulate_belady(numbered, capacity_blocks, slack_blocks).hit_ratio
