"""The only module of kvfs that imports vLLM.  Every difference between the supported releases lives here.

Supported: vLLM 0.32.x and 0.33.x.  Differences handled:
* 0.33 `OffloadingManager.lock` (callers hold it across lookup + prepare_load): managers supply a real lock;
  0.32 has no such property and never enters one.
* 0.33 `ConfigInfo` / `OffloadingSpec.config_info_keys()` / `OffloadingManager.config_info()` and
  `SecondaryTierManager.config_info_keys()/config_info()`: defined on our classes, unused by 0.32.
* 0.33 `SecondaryTierManager.tolerates_off_thread_polling`: declared False (we serve nothing remote).
* 0.33 `OffloadingEvent.metadata_only`: passed only where the field exists.
* 0.33 `OffloadingWorker.submit_load(..., expedited=)` and synchronous load jobs (`_load_jobs[job] = None`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import vllm

from connector.naming import fingerprint_fields

log = logging.getLogger("kvfs.connector")

SUPPORTED_MINORS = ((0, 32), (0, 33))


class UnsupportedVllmVersion(ImportError):
    pass


def _minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (-1, -1)


VLLM_VERSION: str = vllm.__version__
VLLM_MINOR = _minor(VLLM_VERSION)
if VLLM_MINOR not in SUPPORTED_MINORS:
    raise UnsupportedVllmVersion(
        f"kvfs connector supports vLLM 0.32.x and 0.33.x, found {VLLM_VERSION}: install a supported vLLM "
        "(pip install 'vllm==0.32.0' or see requirements/vllm-0.33.0.txt)"
    )

# ruff: noqa: E402 - imports below only after the version gate
from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # noqa: E402
    KVConnectorRole,
    KVConnectorTransferResults,
)
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.worker import (  # noqa: E402
    OffloadingConnectorWorker,
)
from vllm.distributed.kv_transfer.kv_connector.v1.offloading_connector import (  # noqa: E402
    OffloadingConnector,
    OffloadingConnectorMetadata,
)
from vllm.v1.kv_offload.base import (  # noqa: E402
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LoadStoreSpec,
    LookupResult,
    Medium,
    OffloadingEvent,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    TransferResult,
)
from vllm.v1.kv_offload.config import OffloadingConfig  # noqa: E402
from vllm.v1.kv_offload.factory import OffloadingSpecFactory  # noqa: E402
from vllm.v1.kv_offload.tiering.base import (  # noqa: E402
    JobResult,
    SecondaryTierManager,
    TransferJob,
)
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory  # noqa: E402
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec  # noqa: E402

_EVENT_FIELDS = {f.name for f in dataclasses.fields(OffloadingEvent)}

__all__ = [
    "CanonicalKVCaches",
    "GPULoadStoreSpec",
    "JobResult",
    "KVConnectorRole",
    "KVConnectorTransferResults",
    "LoadStoreSpec",
    "LookupResult",
    "Medium",
    "OffloadKey",
    "OffloadingConfig",
    "OffloadingConnector",
    "OffloadingConnectorMetadata",
    "OffloadingConnectorWorker",
    "OffloadingEvent",
    "OffloadingManager",
    "OffloadingSpec",
    "OffloadingSpecFactory",
    "OffloadingWorker",
    "PrepareStoreOutput",
    "ReqContext",
    "RequestOffloadingContext",
    "SecondaryTierFactory",
    "SecondaryTierManager",
    "TransferJob",
    "TieringOffloadingSpec",
    "TransferResult",
]


def storage_event(keys: list[bytes], *, removed: bool, ownership: str | None = None) -> OffloadingEvent:
    kwargs: dict[str, Any] = {"keys": keys, "medium": Medium.STORAGE, "removed": removed}
    if ownership is not None and "ownership" in _EVENT_FIELDS:
        kwargs["ownership"] = ownership
    if "metadata_only" in _EVENT_FIELDS:
        kwargs["metadata_only"] = False
    return OffloadingEvent(**kwargs)


def current_hash_algo() -> str | None:
    """`--prefix-caching-hash-algo` of the engine being built, when vLLM exposes its config here."""
    try:
        from vllm.config import get_current_vllm_config

        return str(get_current_vllm_config().cache_config.prefix_caching_hash_algo)
    except Exception:  # noqa: BLE001 - outside an engine context (some processes, tests) there is none
        return None


def namespace_fields(
    config: OffloadingConfig, *, payload: str, revision: str | None, kv_bytes_per_block: int | None = None
) -> dict[str, Any]:
    """The fingerprint fields of an engine's offloading config (identical on the scheduler and every worker)."""
    par = config.parallel
    return fingerprint_fields(
        model=config.model.name,
        revision=revision,
        dtype=str(config.model.dtype),
        tokens_per_block=tuple(g.tokens_per_block for g in config.groups),
        tokens_per_hash=config.cache.tokens_per_hash,
        blocks_per_chunk=config.cache.blocks_per_chunk,
        tp_size=par.tp_size,
        pp_size=par.pp_size,
        pcp_size=par.pcp_size,
        dcp_size=par.dcp_size,
        world_size=par.world_size,
        kv_bytes_per_block=config.worker_kv_bytes_per_block
        if kv_bytes_per_block is None
        else kv_bytes_per_block,
        kv_cache_layout=getattr(config, "kv_cache_layout", None),
        layer_names=tuple(tuple(g.layer_names) for g in config.groups),
        payload=payload,
    )


def group_index_of(config: OffloadingConfig) -> dict[int, int]:
    """KV cache group id (as in offload keys) -> index in `config.groups` (as in GPULoadStoreSpec.group_sizes)."""
    return {g.group_id: i for i, g in enumerate(config.groups)}


def chunk_tokens_of(config: OffloadingConfig) -> dict[int, int]:
    """KV cache group id (as in offload keys) -> tokens per offloaded chunk, as vLLM's scheduler computes it."""
    return {g.group_id: g.tokens_per_block * config.cache.blocks_per_chunk for g in config.groups}


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
    """An engine's normalized offloading config built without an engine (no model from the hub): for the tests
    and `tools.datapath.tier_bench`, which drive real vLLM managers and tiers directly."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )

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


@contextmanager
def fs_tier_checksummed(hash_block: Callable[[memoryview], object]) -> Iterator[None]:
    """For `tools.datapath.tier_bench`: while inside, vLLM's own fs tier runs `hash_block` over every block it is about
    to write and every block it has read, on its I/O thread (what checksumming costs a tier that moves bytes
    exactly as it does: the bound for a self-validating tier on the same cores)."""
    from vllm.v1.kv_offload.tiering.fs import manager

    store, load = manager.batch_store_block, manager.batch_load_block

    def hashed_store(paths: list[str], view: memoryview, offsets: list[int], size: int, *args: Any) -> Any:
        flat = view.cast("B")
        for offset in offsets:
            hash_block(flat[offset : offset + size])
        return store(paths, view, offsets, size, *args)

    def hashed_load(paths: list[str], view: memoryview, offsets: list[int], size: int, *args: Any) -> Any:
        result = load(paths, view, offsets, size, *args)
        flat = view.cast("B")
        for offset in offsets:
            hash_block(flat[offset : offset + size])
        return result

    manager.batch_store_block, manager.batch_load_block = hashed_store, hashed_load  # type: ignore[assignment]
    try:
        yield
    finally:
        manager.batch_store_block, manager.batch_load_block = store, load  # type: ignore[assignment]
