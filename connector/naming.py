"""Where a vLLM offload key lives on the mount, and the fingerprint of the bytes it holds (no vLLM import).

The fingerprint covers everything that changes a block file's bytes: model (+ revision when configured), the
KV dtype actually used, tokens per GPU block / per hash, blocks per chunk, the parallel layout and this
worker's KV bytes per block, the KV cache layout, the layer names of every group, the payload layout (direct
GPU files and CPU-tier rows differ) and the kvfs file format.  Replicas with equal fields share a namespace.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kvfs.layout import (
    CONFIG_FILENAME,
    BlockKey,
    fingerprint_sha256,
    kvfs_fields,
    namespace_name,
    parse_namespace_dir,
    read_namespace_config,
    write_namespace_config,
)

log = logging.getLogger("kvfs.connector")

# File payload layouts; part of the fingerprint, so the two ways never read each other's files.
PAYLOAD_DIRECT = "direct-layer-major-v1"
PAYLOAD_TIER = "cpu-tier-row-v1"
# vLLM's sha256 variants use a fixed seed unless PYTHONHASHSEED is set; xxhash ones draw a random one.
DETERMINISTIC_HASH_ALGOS = ("sha256", "sha256_cbor")


def offload_key_parts(key: bytes) -> tuple[bytes, int]:
    """vLLM's `OffloadKey` is the block hash followed by the 4-byte big-endian KV group index."""
    return key[:-4], int.from_bytes(key[-4:], "big")


def fingerprint_fields(
    *,
    model: str,
    revision: str | None,
    dtype: str,
    tokens_per_block: tuple[int, ...],
    tokens_per_hash: int,
    blocks_per_chunk: int,
    tp_size: int,
    pp_size: int,
    pcp_size: int,
    dcp_size: int,
    world_size: int,
    kv_bytes_per_block: int,
    kv_cache_layout: str | None,
    layer_names: tuple[tuple[str, ...], ...],
    payload: str,
    hash_algo: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_name": model,
        "model_revision": revision,
        "dtype": dtype,
        "tokens_per_block": list(tokens_per_block),
        "hash_block_size": tokens_per_hash,
        "gpu_blocks_per_file": blocks_per_chunk,
        "tp_size": tp_size,
        "pp_size": pp_size,
        "pcp_size": pcp_size,
        "dcp_size": dcp_size,
        "world_size": world_size,
        "worker_kv_bytes_per_block": kv_bytes_per_block,
        "kv_cache_layout": kv_cache_layout,
        "kv_cache_groups": [list(names) for names in layer_names],
        "kvfs_payload": payload,
        "prefix_hash_algo": hash_algo,
        "inference_engine": "vllm",
    }
    return kvfs_fields(fields)


@dataclass(frozen=True)
class Namespace:
    """One replica-independent namespace directory and the rank whose files this process reads/writes."""

    root: str
    fields: dict[str, Any] = field(hash=False)
    world_size: int = 1

    # Cached: computed per block key on the scheduler's hot path otherwise (a sha256 of the fields each time).
    @cached_property
    def name(self) -> str:
        return namespace_name(self.fields)

    @cached_property
    def fingerprint(self) -> bytes:
        return fingerprint_sha256(self.fields)

    def rank_of(self, rank: int) -> int | None:
        # Single-worker engines write no `_r<rank>` suffix, like vLLM's FileMapper.
        return None if self.world_size == 1 else rank

    def block_key(self, offload_key: bytes, rank: int = 0) -> BlockKey:
        block_hash, group = offload_key_parts(offload_key)
        return BlockKey(self.name, self.rank_of(rank), group, block_hash.hex(), "kvfs")

    def path(self, offload_key: bytes, rank: int = 0) -> str:
        return os.path.join(self.root, self.block_key(offload_key, rank).relpath())

    def paths_all_ranks(self, offload_key: bytes) -> list[str]:
        return [self.path(offload_key, r) for r in range(self.world_size)]

    def publish_config(self) -> None:
        """Write `<root>/<ns>/config.json` once (atomically) and warn about replicas that cannot share."""
        os.makedirs(self.root, exist_ok=True)
        write_namespace_config(self.root, self.fields)
        warn_unshareable(self.root, self.fields)


def file_identity_key(offload_key: bytes, first_block: int, num_blocks: int) -> bytes:
    """The key bytes in a block file's header: the vLLM key plus the chunk-relative block range it holds."""
    return offload_key + first_block.to_bytes(2, "big") + num_blocks.to_bytes(2, "big")


def hash_seed_warning(hash_algo: str | None) -> str | None:
    """Why block hashes of this process will differ from other replicas', or None when they agree."""
    if hash_algo is None:
        return None
    if hash_algo not in DETERMINISTIC_HASH_ALGOS and not os.environ.get("PYTHONHASHSEED"):
        return (
            f"prefix caching hash {hash_algo!r} without PYTHONHASHSEED draws a random seed per process: "
            "replicas will never hit each other's kvfs blocks. Set the same PYTHONHASHSEED on every replica "
            "or use --prefix-caching-hash-algo sha256."
        )
    return None


def warn_unshareable(root: str, fields: dict[str, Any]) -> list[str]:
    """Loud warnings for sibling namespaces of the same model that differ only in settings replicas must
    share (hash algorithm), and for a non-deterministic hash seed.  Returns the warnings (for tests)."""
    warnings: list[str] = []
    seed = hash_seed_warning(fields.get("prefix_hash_algo"))
    if seed:
        warnings.append(seed)
    mine = namespace_name(fields)
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    comparable = {k: v for k, v in fields.items() if k != "prefix_hash_algo"}
    for entry in entries:
        parsed = parse_namespace_dir(entry)
        if parsed is None or parsed[1] is not None or entry == mine:
            continue
        if not os.path.exists(os.path.join(root, entry, CONFIG_FILENAME)):
            continue
        other = read_namespace_config(root, entry)
        if not other or other.get("model_name") != fields.get("model_name"):
            continue
        other_cmp = {k: v for k, v in other.items() if k != "prefix_hash_algo"}
        if other_cmp == comparable and other.get("prefix_hash_algo") != fields.get("prefix_hash_algo"):
            warnings.append(
                f"namespace {entry} holds the same model and layout written with prefix hash "
                f"{other.get('prefix_hash_algo')!r}, this replica uses {fields.get('prefix_hash_algo')!r}: "
                "they cannot share blocks; use one --prefix-caching-hash-algo on every replica."
            )
    for text in warnings:
        log.warning("kvfs: REPLICAS CANNOT SHARE: %s", text)
    return warnings
