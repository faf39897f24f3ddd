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
    BlockKey,
    fingerprint_sha256,
    kvfs_fields,
    namespace_name,
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


def block_hash_hex(key: bytes) -> str:
    """The block hash of an offload key as block files and the journal spell it (`BlockKey.block_hash`)."""
    return key[:-4].hex()


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
        "inference_engine": "vllm",
    }
    return kvfs_fields(fields)


@dataclass(frozen=True)
class NamespaceDir:
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
        group = offload_key_parts(offload_key)[1]
        return BlockKey(self.name, self.rank_of(rank), group, block_hash_hex(offload_key), "kvfs")

    def path(self, offload_key: bytes, rank: int = 0) -> str:
        return self.path_of(self.block_key(offload_key, rank))

    def path_of(self, key: BlockKey) -> str:
        """The file of a block key of this namespace (callers holding the key skip computing it again)."""
        return self._root_prefix + key.relpath()

    @cached_property
    def _root_prefix(self) -> str:
        # os.path.join's result for every relpath (never absolute), without its per-call checks: once a file.
        return os.path.join(self.root, "")

    def paths_all_ranks(self, offload_key: bytes) -> list[str]:
        return [self.path(offload_key, r) for r in range(self.world_size)]

    def publish_config(self, hash_algo: str | None = None) -> list[str]:
        """Write `<root>/<ns>/config.json` once (atomically) and warn about replicas that cannot share."""
        os.makedirs(self.root, exist_ok=True)
        write_namespace_config(self.root, self.fields)
        return warn_unshareable(self.root, self.name, hash_algo)


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


def hash_algo_dir(root: str, namespace: str) -> str:
    """`<root>/.kvfs/hash-algos/<ns>/`: one empty file per prefix-hash algorithm replicas of `ns` use.

    The algorithm is not part of the fingerprint: the scheduler process may not know it (vLLM does not pass it
    to offloading specs), and scheduler and workers must agree on the namespace."""
    return os.path.join(root, ".kvfs", "hash-algos", namespace)


def warn_unshareable(root: str, namespace: str, hash_algo: str | None) -> list[str]:
    """Loud warnings when this replica's block hashes cannot match other replicas' (a non-deterministic hash
    seed, or another replica of the namespace using another prefix-hash algorithm).  Returns the warnings."""
    warnings: list[str] = []
    seed = hash_seed_warning(hash_algo)
    if seed:
        warnings.append(seed)
    if hash_algo:
        directory = hash_algo_dir(root, namespace)
        try:
            os.makedirs(directory, exist_ok=True)
            marker = os.path.join(directory, hash_algo)
            if not os.path.exists(marker):
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o664))
            others = sorted(name for name in os.listdir(directory) if name != hash_algo)
        except OSError as exc:
            log.debug("kvfs: cannot record the prefix-hash algorithm under %s: %s", directory, exc)
            others = []
        if others:
            warnings.append(
                f"namespace {namespace} is also used by replicas with prefix hash {others}, this one uses "
                f"{hash_algo!r}: their blocks never match; use one --prefix-caching-hash-algo on every replica."
            )
    for text in warnings:
        log.warning("kvfs: REPLICAS CANNOT SHARE: %s", text)
    return warnings
