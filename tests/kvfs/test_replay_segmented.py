"""`slru` and `2q` replayed in memory against their catalog replay (block for block), and the replay-only
references S3-FIFO, ARC and W-TinyLFU on hand-checked sequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvfs.replay import unique_blocks
from kvfs.replay.baselines import simulate_lru
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.published import simulate_arc, simulate_s3fifo, simulate_wtinylfu
from kvfs.replay.segmented import simulate_2q, simulate_slru
from kvfs.trace import read_trace
from tools.bench.replay import SHARED as MOONCAKE  # the shared trace beside the checkout
from tools.tracegen import generate


@pytest.mark.parametrize("workload", ["chat", "rag", "sessions", "sysprompt"])
@pytest.mark.parametrize("policy", ["slru", "2q"])
def test_segmented_replay_matches_the_catalog_replay_block_for_block(
    workload: str, policy: str, tmp_path: Path
) -> None:
    trace = [r.hash_ids for r in generate(workload, requests=200, seed=5)]
    fast_sim = simulate_slru if policy == "slru" else simulate_2q
    for fraction in (0.05, 0.2):
        capacity = max(1, int(unique_blocks(trace) * fraction))
        slack = max(1, capacity // 100)
        fast = fast_sim(trace, capacity, slack)
        real = simulate_catalog_policy(trace, capacity, slack, policy=policy, workdir=tmp_path)
        assert (fast.hit_blocks, fast.total_blocks, fast.evicted) == (
            real.hit_blocks,
            real.total_blocks,
            real.evicted,
        )


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the shared Mooncake trace is not here")
def test_2q_replay_matches_the_catalog_on_the_mooncake_trace(tmp_path: Path) -> None:
    # Ghosts that come back hundreds of requests later: the revive path, with the re-stored blocks put into the
    # protected LRU at their place.
    trace = [list(r.hash_ids) for r in read_trace(MOONCAKE)][:300]
    capacity = max(1, unique_blocks(trace) // 20)
    fast = simulate_2q(trace, capacity, 1)
    real = simulate_catalog_policy(trace, capacity, 1, policy="2q", workdir=tmp_path)
    assert (fast.hit_blocks, fast.evicted) == (real.hit_blocks, real.evicted)


def test_2q_ghost_makes_a_restored_block_outlive_newer_probation() -> None:
    # Capacity 2, no slack: [3] evicts 1 (a ghost), [1] comes back and evicts 2.  At [5]'s pass the re-store of
    # 1 counts as a use (2q): 1 is protected and the probation blocks 3 then 5 go; the last [1] hits.  SLRU
    # has no ghosts: 1 is on probation again and is the oldest at [6]'s pass.
    seq = [[1], [2], [3], [1], [5], [6], [1]]
    assert simulate_2q(seq, 2).hit_blocks == 1
    assert simulate_slru(seq, 2).hit_blocks == 0


def test_s3fifo_moves_used_blocks_to_main_and_ghosts_skip_the_small_queue() -> None:
    # Capacity 10: small queue 1 block.  Block 1 used twice stays (moved to main); one-off blocks pass through.
    seq = [[1], [1], *[[n] for n in range(100, 120)], [1]]
    assert simulate_s3fifo(seq, 10).hit_blocks == 2
    # A one-off flood evicts a block seen once; it comes back while a ghost: straight to main, then hit.
    seq2 = [[1], *[[n] for n in range(100, 105)], [1], *[[n] for n in range(200, 205)], [1]]
    res = simulate_s3fifo(seq2, 4)
    assert res.hit_blocks == 1


def test_arc_adapts_between_recency_and_frequency() -> None:
    # A hot pair reused between one-off blocks: ARC keeps them (T2), LRU-like T1 churns.
    hot = [[1], [2]]
    seq = [*hot, *hot]
    for n in range(100, 140):
        seq += [[n], [1], [2]] if n % 2 else [[n]]
    res = simulate_arc(seq, 4)
    assert res.hit_blocks == 2 + 40  # both hot blocks every time after the first two
    assert simulate_arc([[n] for n in range(50)], 4).hit_blocks == 0


# W-TinyLFU at capacity 10: a window of 1 block, main 9 (protected 7); counts halve after 100.


def test_wtinylfu_admission_keeps_a_frequent_block_through_a_flood_of_one_offs() -> None:
    # Block 1 used 3 times, then 50 one-off blocks: each leaves the window with a count of 1 against main's
    # oldest, block 1 with 3, and is the victim.  LRU of the same size loses block 1.
    seq = [[1], [1], [1], *[[n] for n in range(100, 150)], [1]]
    assert simulate_wtinylfu(seq, 10).hit_blocks == 3
    assert simulate_lru(seq, 10).hit_blocks == 2


def test_wtinylfu_a_tie_evicts_the_candidate_so_main_keeps_its_first_blocks() -> None:
    # 30 one-offs: 0..8 fill main while it has room; from then each block leaving the window ties main's oldest
    # (count 1 each) and goes.  So the early block 0 hits and the late block 28 does not.
    seq = [*[[n] for n in range(30)], [0], [28]]
    assert simulate_wtinylfu(seq, 10).per_request[-2:] == [1, 0]


def test_wtinylfu_counts_age_so_old_popularity_fades() -> None:
    # The same flood as above, four times as long: two halvings take block 1's count to 0, and a newcomer
    # with a count of 1 wins main's place from it.
    seq = [[1], [1], [1], *[[n] for n in range(100, 300)], [1]]
    assert simulate_wtinylfu(seq, 10).per_request[-1] == 0


def test_wtinylfu_window_hits_a_block_reused_at_once_and_never_evicts_the_request_just_served() -> None:
    # A request of 6 blocks in a tier of 4 stays whole (the replay's rule: it was just served), and its
    # repeat hits every block; a block reused right after its store hits in the window.
    assert simulate_wtinylfu([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]], 4).hit_blocks == 6
    assert simulate_wtinylfu([[7], [7], [8], [8]], 10).per_request == [0, 1, 0, 1]
