"""`adaptive` replayed in memory against its catalog replay, block for block, on SQLite and PostgreSQL: the same
hits and evictions, and the same order chosen at every pass."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvfs.catalog import Catalog
from kvfs.policy.adaptive import AdaptivePolicy
from kvfs.replay import chooser as replay_chooser
from kvfs.replay import simulate_policy, unique_blocks
from kvfs.replay.catalog_replay import simulate_catalog_policy
from kvfs.replay.chooser import FIFO, OrdersRule, simulate_adaptive
from kvfs.trace import read_trace
from tools.bench.replay import SHARED as MOONCAKE  # the shared trace beside the checkout
from tools.tracegen import generate


class _Recording(AdaptivePolicy):
    """The catalog policy, recording the order of each pass's capacity stream."""

    def __init__(self) -> None:
        super().__init__()
        self.orders: list[str] = []

    def _ordered(self, catalog: Catalog, choice: str, *args: Any) -> Generator[Any, None, None]:
        self.orders.append(choice)
        return super()._ordered(catalog, choice, *args)


def _memory_orders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    orders: list[str] = []
    real_order = OrdersRule.order

    def order(self: OrdersRule, *args: Any) -> Iterator[Any]:
        out = real_order(self, *args)
        if self.shadows is not None:  # the real tier, not a shadow
            orders.append(self.choice)
        return out

    monkeypatch.setattr(OrdersRule, "order", order)
    return orders


def _same(
    trace: list[list[int]],
    capacity: int,
    slack: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    catalog: Catalog | None = None,
) -> list[str]:
    memory_orders = _memory_orders(monkeypatch)
    fast = simulate_adaptive(trace, capacity, slack)
    policy = _Recording()
    real = simulate_catalog_policy(trace, capacity, slack, policy=policy, workdir=tmp_path, catalog=catalog)
    assert (fast.hit_blocks, fast.total_blocks, fast.evicted) == (
        real.hit_blocks,
        real.total_blocks,
        real.evicted,
    )
    assert policy.orders == memory_orders
    return memory_orders


@pytest.mark.parametrize("workload", ["chat", "rag", "sessions", "sysprompt", "agent", "mixed"])
def test_adaptive_replay_matches_the_catalog_replay_block_for_block(
    workload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = [list(r.hash_ids) for r in generate(workload, requests=200, seed=5)]
    for fraction in (0.02, 0.05, 0.2):
        capacity = max(1, int(unique_blocks(trace) * fraction))
        _same(trace, capacity, max(1, capacity // 100), tmp_path, monkeypatch)


def test_the_orders_switch_and_the_catalog_follows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small shadows (sampled keys) and a switch to S3-FIFO's order: its sweep's moves and ghosts go through the
    # catalog's pass writes, and still every pass is the in-memory one.
    monkeypatch.setattr(replay_chooser.chooser, "SHADOW_BLOCKS", 40)
    trace = [list(r.hash_ids) for r in generate("sysprompt", requests=400, seed=2)]
    capacity = max(1, int(unique_blocks(trace) * 0.05))
    orders = _same(trace, capacity, max(1, capacity // 100), tmp_path, monkeypatch)
    assert len(set(orders)) > 1 and FIFO in orders


def test_adaptive_replays_identically_on_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = [list(r.hash_ids) for r in generate("chat", requests=150, seed=4)]
    capacity = max(1, int(unique_blocks(trace) * 0.05))
    with Catalog.open(pg_url) as catalog:
        _same(trace, capacity, 1, tmp_path, monkeypatch, catalog=catalog)


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the shared Mooncake trace is not here")
def test_adaptive_replay_matches_the_catalog_on_the_mooncake_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ghosts that come back hundreds of requests later: re-stores counted by class, FIFO ghosts entering main.
    trace = [list(r.hash_ids) for r in read_trace(MOONCAKE)][:300]
    _same(trace, max(1, unique_blocks(trace) // 20), 1, tmp_path, monkeypatch)


def test_through_catalog_runs_adaptive(tmp_path: Path) -> None:
    trace = [list(r.hash_ids) for r in generate("chat", requests=80, seed=1)]
    capacity = max(1, unique_blocks(trace) // 10)
    assert (
        simulate_policy(trace, capacity, 1, "adaptive", through_catalog=True).hit_blocks
        == simulate_policy(trace, capacity, 1, "adaptive").hit_blocks
    )
