"""Builders for vLLM-facing connector tests (real vLLM classes, no model from the hub)."""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)


def offloading_config(
    extra: dict[str, Any],
    *,
    groups: int = 1,
    layers: int = 2,
    tokens_per_block: int = 16,
    blocks_per_chunk: int = 4,
    world_size: int = 1,
    rank: int = 0,
    kv_bytes_per_block: int = 1024,
    model: str = "meta-llama/Llama-3.1-8B",
    dtype: str = "bfloat16",
    replicated_layout: bool = False,
    engine_id: str = "engine-0",
) -> OffloadingConfig:
    return OffloadingConfig(
        groups=tuple(
            OffloadingGroupConfig(
                tokens_per_block=tokens_per_block,
                layer_names=tuple(f"model.layers.{g}.{i}.attn" for i in range(layers)),
                group_id=g,
            )
            for g in range(groups)
        ),
        worker_kv_bytes_per_block=kv_bytes_per_block,
        enable_kv_cache_events=True,
        extra_config=extra,
        engine_id=engine_id,
        model=OffloadingModelConfig(name=model, dtype=dtype),
        cache=OffloadingCacheConfig(tokens_per_hash=tokens_per_block, blocks_per_chunk=blocks_per_chunk),
        parallel=OffloadingParallelConfig(
            rank=rank,
            world_size=world_size,
            tp_size=world_size,
            pp_size=1,
            pcp_size=1,
            dcp_size=1,
            data_parallel_index=0,
            data_parallel_size=1,
            data_parallel_rank_local=None,
            is_parallelism_agnostic=False,
        ),
        replicated_layout=replicated_layout,
    )


def poll(fn, timeout: float = 10.0, interval: float = 0.005):  # type: ignore[no-untyped-def]
    """Call `fn` until it returns something truthy (the scheduler would ask again next step)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
