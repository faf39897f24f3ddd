"""`adaptive`'s choice of order (kvfs.policy.chooser): sampling, scores, hysteresis."""

from __future__ import annotations

import math

import pytest

from kvfs.policy.chooser import HYSTERESIS, MEMORY, SHADOW_BLOCKS, Scores, sample_rate, sampled, update


def test_sample_rate_keeps_shadows_at_a_fixed_size() -> None:
    assert sample_rate(10) == 1.0
    assert sample_rate(SHADOW_BLOCKS) == 1.0
    assert sample_rate(4 * SHADOW_BLOCKS) == pytest.approx(0.25)


def test_sampling_is_by_key_and_near_the_rate() -> None:
    keys = range(200_000)
    share = sum(sampled(k, 0.1) for k in keys) / len(keys)
    assert share == pytest.approx(0.1, abs=0.005)
    # Sequential ids (the trace's interned blocks) are mixed: no run of 50 in a row all out.
    assert all(any(sampled(k, 0.1) for k in range(s, s + 50)) for s in range(0, 10_000, 50))
    # The same key, the same answer; every key at rate 1.
    assert [sampled(k, 0.3) for k in range(100)] == [sampled(k, 0.3) for k in range(100)]
    assert all(sampled(k, 1.0) for k in range(100))


def test_the_first_candidate_orders_until_another_leads_by_more_than_the_hysteresis() -> None:
    s = Scores.start(3)
    assert s.current == 0
    s = update(s, [10, 10, 10], 0, 100)  # a tie keeps the current order
    assert s.current == 0
    # 10.04 against 10: ahead by 0.4%, less than the half percent.
    s = Scores((10.0, 10.04, 0.0), 0)
    assert update(s, [0, 0, 0], 0, 100).current == 0
    assert update(s, [0, 1, 0], 0, 100).current == 1
    assert HYSTERESIS == 0.005


def test_scores_decay_by_requested_blocks_over_the_tiers_capacity() -> None:
    s = Scores((100.0, 50.0), 0)
    # One tier capacity of requested blocks decays by e^(-1 / MEMORY).
    assert update(s, [0, 0], 100, 100).hits == pytest.approx(
        (100 * math.exp(-1 / MEMORY), 50 * math.exp(-1 / MEMORY))
    )
    with pytest.raises(ValueError):
        update(s, [1, 2, 3], 1, 100)
