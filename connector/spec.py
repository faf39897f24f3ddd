"""`KvfsOffloadingSpec`: vLLM's OffloadingConnector moves KV directly between the GPU and kvfs block files.

Load it under `KvfsOffloadingConnector` (connector.connector), which reports failed loads to vLLM so their tokens
are recomputed; under the stock OffloadingConnector a vanished file would crash the engine (vLLM asserts on
failed jobs), so the worker refuses to start there.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from connector.compat import (
    CanonicalKVCaches,
    OffloadingConfig,
    OffloadingSpec,
    chunk_tokens_of,
    current_hash_algo,
    group_index_of,
    namespace_fields,
)
from connector.config import ConfigError, KvfsConnectorConfig
from connector.manager import KvfsManager
from connector.naming import PAYLOAD_DIRECT, NamespaceDir
from connector.worker import KvfsWorker
from kvfs.blockfile import Durability

log = logging.getLogger("kvfs.connector")

CONNECTOR_HINT = (
    '--kv-transfer-config \'{"kv_connector":"KvfsOffloadingConnector","kv_connector_module_path":'
    '"connector.connector","kv_role":"kv_both","kv_load_failure_policy":"recompute",'
    '"kv_connector_extra_config":{"spec_name":"KvfsOffloadingSpec","spec_module_path":"connector.spec",'
    '"block_size":256,"kvfs_root":"/mnt/files-storage"}}\''
)


def open_journal(root: str, role: str) -> Any:
    from kvfs.journal import JournalWriter

    return JournalWriter(root, writer_id=f"{socket.gethostname()}-{os.getpid()}-{role}")


class KvfsOffloadingSpec(OffloadingSpec):
    # Set by KvfsOffloadingConnector: failed loads then reach vLLM as invalid blocks instead of an assert.
    failure_channel: bool = False

    def __init__(self, config: OffloadingConfig) -> None:
        super().__init__(config)
        self.kvfs = KvfsConnectorConfig.from_extra(self.extra_config)
        if int(self.extra_config.get("sync_load_budget_bytes", 0) or 0) > 0 and len(config.groups) > 1:
            # vLLM 0.33 synchronous loads can report failures only as block ids, which its scheduler refuses
            # for models with several KV groups: a vanished file would then take the engine down.
            raise ConfigError(
                "sync_load_budget_bytes must be 0 with kvfs for models with several KV cache groups "
                "(failed synchronous loads cannot be recomputed there)"
            )
        # Pure-MLA TP-only engines hold identical KV on every rank: vLLM then lets rank 0 alone store, and
        # every rank reads that one file (no `_r<rank>` directories).
        self.replicated_layout = bool(getattr(config, "replicated_layout", False))
        self.namespace = NamespaceDir(
            root=self.kvfs.root,
            fields=namespace_fields(config, payload=PAYLOAD_DIRECT, revision=self.kvfs.model_revision),
            world_size=1 if self.replicated_layout else config.parallel.world_size,
        )
        self.namespace.publish_config(current_hash_algo())
        self._manager: KvfsManager | None = None

    @classmethod
    def config_info_keys(cls, extra_config: dict[str, Any]) -> tuple[str, ...]:
        return ("kvfs_root", "kvfs_namespace")

    def get_manager(self) -> KvfsManager:
        if self._manager is None:
            journal = open_journal(self.kvfs.root, "sched") if self.kvfs.journal else None
            self._manager = KvfsManager(
                self.namespace,
                lookup_ttl_s=self.kvfs.lookup_ttl_s,
                journal=journal,
                config_info={"kvfs_root": self.kvfs.root, "kvfs_namespace": self.namespace.name},
                chunk_tokens=chunk_tokens_of(self.config),
                idle_wait_s=self.kvfs.idle_wait_s,
            )
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> KvfsWorker:
        if not self.failure_channel:
            raise RuntimeError(
                "KvfsOffloadingSpec must run under KvfsOffloadingConnector, which turns a vanished or corrupt "
                "block file into a recompute; vLLM's own OffloadingConnector asserts on it. Use "
                + CONNECTOR_HINT
            )
        journal = open_journal(self.kvfs.root, f"w{self.config.parallel.rank}") if self.kvfs.journal else None
        return KvfsWorker(
            kv_caches=kv_caches,
            namespace=self.namespace,
            rank=self.config.parallel.rank,
            group_index=group_index_of(self.config),
            blocks_per_chunk=self.blocks_per_chunk,
            idle_wait_s=self.kvfs.idle_wait_s,
            pool_kwargs={
                "threads": self.kvfs.threads,
                "max_staging_bytes": self.kvfs.max_staging_bytes,
                "store_budget_s": self.kvfs.store_budget_s,
                "durability": Durability(self.kvfs.durability),
                "direct": self.kvfs.use_direct_io(),
                "file_mode": self.kvfs.file_mode,
                "journal": journal,
                "device_checksums": self.kvfs.gpu_checksums,
                "cuda_graphs": self.kvfs.cuda_graphs,
            },
        )
