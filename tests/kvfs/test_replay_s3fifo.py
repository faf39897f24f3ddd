"""`s3fifo` replayed in memory against its catalog replay (block for block), and its order on hand-checked
sequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvfs.replay import unique_blocks
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.published import simulate_s3fifo
from kvfs.replay.s3fifo import simulate_s3fifo_chains
from kvfs.trace import read_trace
from tools.bench.replay import SHARED as MOONCAKE  # the shared trace beside the checkout
from tools.tracegen import generate


def _same(trace: list[list[int]], capacity: int, slack: int, tmp_path: Path) -> None:
    fast = simulate_s3fifo_chains(trace, capacity, slack)
    real = simulate_catalog_policy(trace, capacity, slack, policy="s3fifo", workdir=tmp_path)
    assert (fast.hit_blocks, fast.total_blocks, fast.evicted) == (
        real.hit_blocks,
        real.total_blocks,
        real.evicted,
    )


@pytest.mark.parametrize("workload", ["chat", "rag", "sessions", "sysprompt", "agent"])
def test_s3fifo_replay_matches_the_catalog_replay_block_for_block(workload: str, tmp_path: Path) -> None:
    trace = [list(r.hash_ids) for r in generate(workload, requests=200, seed=5)]
    for fraction in (0.02, 0.05, 0.2):
        capacity = max(1, int(unique_blocks(trace) * fraction))
        _same(trace, capacity, max(1, capacity // 100), tmp_path)


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the shared Mooncake trace is not here")
def test_s3fifo_replay_matches_the_catalog_on_the_mooncake_trace(tmp_path: Path) -> None:
    # Ghosts that come back hundreds of requests later: stores that enter main.
    trace = [list(r.hash_ids) for r in read_trace(MOONCAKE)][:300]
    _same(trace, max(1, unique_blocks(trace) // 20), 1, tmp_path)


def test_on_single_block_requests_it_is_the_published_s3fifo() -> None:
    # No chains, no orphans or superseded leaves, no slack: the small queue's target from what stays is the
    # paper's (capacity), and so is the ghost bound.
    trace = [[n % 37] if n % 3 else [100 + n] for n in range(600)]
    for capacity in (5, 10, 20):
        assert (
            simulate_s3fifo_chains(trace, capacity).hit_blocks == simulate_s3fifo(trace, capacity).hit_blocks
        )


def test_used_blocks_survive_a_one_off_flood_and_ghosts_enter_main(tmp_path: Path) -> None:
    seq = [[1], [1], *[[n] for n in range(100, 120)], [1]]
    assert simulate_s3fifo_chains(seq, 10).hit_blocks == 2
    seq2 = [[1], *[[n] for n in range(100, 105)], [1], *[[n] for n in range(200, 205)], [1]]
    assert simulate_s3fifo_chains(seq2, 4).hit_blocks == 1
    _same(seq, 10, 0, tmp_path)
    _same(seq2, 4, 0, tmp_path)


def test_a_chain_loses_its_tail_before_its_head(tmp_path: Path) -> None:
    # One chain of 4, then one-off blocks: the chain's tail goes first, so its head still hits.
    seq = [[1, 2, 3, 4], [50], [51], [1, 2]]
    assert simulate_s3fifo_chains(seq, 5).hit_blocks == 2
    _same(seq, 5, 0, tmp_path)
