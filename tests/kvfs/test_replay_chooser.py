"""`adaptive` replayed in memory (kvfs.replay.chooser): every candidate order on one tier, shadows that choose."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvfs.policy import chooser
from kvfs.replay import simulate_lru, unique_blocks
from kvfs.replay.chooser import CANDIDATES, FIFO, SHARES, OrdersRule, simulate_adaptive
from kvfs.replay.memory import SharesRule, simulate_chains, simulate_shares
from kvfs.replay.published import simulate_s3fifo
from tools.tracegen import generate


def zipf_with_scans(seed: int, n: int = 3000, hot: int = 200, one_off: float = 0.3) -> list[list[int]]:
    """Single-block requests: a Zipf(1) hot set, and a share of keys never seen again."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(hot)]
    out, fresh = [], 10_000
    for _ in range(n):
        if rng.random() < one_off:
            out.append([fresh])
            fresh += 1
        else:
            out.append(rng.choices(range(hot), weights)[0:1])
    return out


def test_the_fifo_order_on_the_chain_tier_is_s3fifo_on_single_block_requests() -> None:
    # No chains (no orphans, no superseded leaves): the tier held to S3-FIFO's order is S3-FIFO, hit for hit.
    for seed in (0, 1):
        trace = zipf_with_scans(seed)
        for capacity in (10, 40):
            fixed = simulate_chains(trace, capacity, 0, OrdersRule(capacity, FIFO))
            assert fixed.hit_blocks == simulate_s3fifo(trace, capacity).hit_blocks


def test_each_fixed_order_is_the_candidate_it_names() -> None:
    trace = [r.hash_ids for r in generate("chat", requests=300, seed=3)]
    capacity = max(1, unique_blocks(trace) // 20)
    shares = simulate_chains(trace, capacity, 1, OrdersRule(capacity, SHARES))
    assert shares.hit_blocks == simulate_chains(trace, capacity, 1, SharesRule()).hit_blocks
    with pytest.raises(ValueError, match="unknown order"):
        OrdersRule(capacity, "mru")
    # A shadow is held to its order, and keeps S3-FIFO's queues only for the FIFO order.
    shadow = OrdersRule(capacity, SHARES, fixed=True)
    assert shadow.fifo is None and OrdersRule(capacity, FIFO, fixed=True).fifo is not None
    with pytest.raises(ValueError, match="cannot order"):
        shadow.choice = FIFO


def test_the_chooser_switches_to_the_fifo_order_where_s3fifo_wins() -> None:
    # A hot set read again and again among one-off keys, a tier of 10 blocks: S3-FIFO's counter keeps the hot
    # keys, the two shares alone (the old rule) lose 9% of its hits; `adaptive` follows its shadows to the
    # FIFO order and keeps within 1%.
    trace = zipf_with_scans(0)
    best = simulate_s3fifo(trace, 10).hit_blocks
    assert simulate_shares(trace, 10).hit_blocks < 0.95 * best
    choices: list[str] = []
    mine = simulate_adaptive(trace, 10, 0, choices=choices).hit_blocks
    assert mine >= 0.99 * best
    assert choices[0] == SHARES and choices[-1] == FIFO
    assert choices.count(FIFO) > 0.8 * len(trace)


def test_shadows_are_sampled_to_a_fixed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # A large tier: its shadows see a sample of the keys (whole chains' prefixes), sized SHADOW_BLOCKS.
    sizes: list[int] = []
    real_init = OrdersRule.__init__

    def spy(self: OrdersRule, capacity: int, choice: str = CANDIDATES[0], **kwargs: Any) -> None:
        sizes.append(capacity)
        real_init(self, capacity, choice, **kwargs)

    monkeypatch.setattr(OrdersRule, "__init__", spy)
    monkeypatch.setattr(chooser, "SHADOW_BLOCKS", 50)
    trace = [r.hash_ids for r in generate("sessions", requests=200, seed=2)]
    capacity = unique_blocks(trace) // 4
    result = simulate_adaptive(trace, capacity, 2)
    assert sizes == [capacity] + [50] * len(CANDIDATES)
    assert 0 < result.hit_blocks <= result.total_blocks


@pytest.mark.parametrize("seed", [11])
def test_adaptive_is_not_below_lru_on_small_traces(seed: int) -> None:
    for workload in ("chat", "sysprompt", "sessions"):
        trace = [r.hash_ids for r in generate(workload, requests=600, seed=seed)]
        for fraction in (0.02, 0.1):
            capacity = max(1, int(unique_blocks(trace) * fraction))
            slack = max(1, capacity // 100)
            assert (
                simulate_adaptive(trace, capacity, slack).hit_blocks
                >= simulate_lru(trace, capacity, slack).hit_blocks
            )
