"""`KvfsTier`: a secondary tier of vLLM's TieringOffloadingSpec, behind vLLM's CPU tier.

vLLM moves KV between the GPU and its pinned CPU tier; this tier moves CPU-tier rows (one chunk each) to and
from kvfs block files through the same I/O pool, block format, journal and existence cache as the direct spec.
Every method runs in the scheduler process and returns at once; the I/O happens on the pool's threads.  A load
that misses (file vanished, truncated, corrupt, foreign) is reported per key, so vLLM recomputes exactly those
chunks and this tier answers MISS for them from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Any, ClassVar

import torch

from connector.chain import chain_parents, chain_positions, parent_keys, request_time
from connector.compat import (
    JobResult,
    LookupResult,
    Medium,
    OffloadingEvent,
    ReqContext,
    RequestOffloadingContext,
    SecondaryTierManager,
    TransferJob,
    chunk_tokens_of,
    current_hash_algo,
    namespace_fields,
)
from connector.config import KvfsConnectorConfig
from connector.copier import GroupCopier
from connector.iopool import FileOp, IoPool
from connector.lookup import ExistenceCache, Presence
from connector.manager import _RESULT
from connector.naming import PAYLOAD_TIER, NamespaceDir, block_hash_hex, file_identity_key
from connector.spec import open_journal
from kvfs.blockfile import BlockIdentity, Durability
from kvfs.layout import BlockKey

log = logging.getLogger("kvfs.connector")


class KvfsTier(SecondaryTierManager):
    medium: ClassVar[Medium] = Medium.STORAGE
    # vLLM 0.33: only the scheduler thread (on_schedule_end) polls us.
    tolerates_off_thread_polling: ClassVar[bool] = False

    def __init__(
        self,
        offloading_spec: Any,
        primary_kv_view: memoryview,
        tier_type: str,
        backpressure_detector: Any = None,
        locality: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        # O_DIRECT by default wherever the root takes it, as vLLM's own fs tier does (on local disk its writes
        # and cold reads ran 1.3-3x faster than buffered ones; docs/benchmarks.md, "KvfsTier vs vLLM's fs tier").
        self.kvfs = KvfsConnectorConfig.from_extra(
            {k if k.startswith("kvfs_") else f"kvfs_{k}": v for k, v in settings.items()},
            direct_io_default=None,
        )
        config = offloading_spec.config
        row = self.block_size_bytes
        self.namespace = NamespaceDir(
            root=self.kvfs.root,
            # One row holds every worker's bytes of a chunk, so one file per chunk, no rank directories.
            fields=namespace_fields(
                config, payload=PAYLOAD_TIER, revision=self.kvfs.model_revision, kv_bytes_per_block=row
            ),
            world_size=1,
        )
        self.namespace.publish_config(current_hash_algo())
        self.chunk_tokens = chunk_tokens_of(config)
        flat = (
            primary_kv_view.cast("B")
            if primary_kv_view.ndim != 1 or primary_kv_view.format != "B"
            else primary_kv_view
        )
        rows = torch.frombuffer(flat, dtype=torch.int8).view(-1, row)
        # Files are read into and written from the rows themselves, as vLLM's own fs tier does: no staging copy.
        self.rows = flat
        self.copier = GroupCopier([rows], [row])
        self.journal = open_journal(self.kvfs.root, "tier") if self.kvfs.journal else None
        self.pool = IoPool(
            threads=self.kvfs.threads,
            max_file_bytes=row,
            device=torch.device("cpu"),
            max_staging_bytes=self.kvfs.max_staging_bytes,
            store_budget_s=self.kvfs.store_budget_s,
            durability=Durability(self.kvfs.durability),
            direct=self.kvfs.use_direct_io(),
            file_mode=self.kvfs.file_mode,
            journal=self.journal,
        )
        self.cache = ExistenceCache(self.namespace.paths_all_ranks, ttl_s=self.kvfs.lookup_ttl_s)
        self._jobs: dict[int, tuple[list[bytes], list[int], set[bytes]]] = {}
        log.info(
            "kvfs tier: namespace %s under %s, %d I/O threads",
            self.namespace.name,
            self.kvfs.root,
            self.pool.threads,
        )

    def _ops(
        self,
        job: TransferJob,
        keys: list[bytes],
        chunk_ids: list[int],
        is_load: bool,
        block_keys: list[BlockKey] | None = None,
    ) -> list[FileOp]:
        # Runs on the scheduler thread for every file: each key's block key is computed once (here, or by the
        # caller that journals it).
        namespace, row, rows = self.namespace, self.block_size_bytes, self.rows
        if block_keys is None:
            block_keys = [namespace.block_key(k) for k in keys]
        if is_load:
            positions: list[int] | None = None
            parents: list[str | None] | None = None
            stamp: float | None = None
        else:
            stamp = request_time(job.req_context)
            # Stores journal each chunk's prefix-chain position, from the request context vLLM hands the job.
            positions = chain_positions(keys, job.req_context, self.chunk_tokens)
            parents = chain_parents(
                keys, positions, block_hash_hex, parent_keys(keys, job.req_context, self.chunk_tokens)
            )
        return [
            FileOp(
                job_id=job.job_id,
                is_load=is_load,
                path=namespace.path_of(block_key),
                ident=BlockIdentity(namespace.fingerprint, file_identity_key(key, 0, 1)),
                copier=self.copier,
                block_ids=[cid],
                first=0,
                file_blocks=1,
                block_key=block_key,
                chain_pos=-1 if positions is None else positions[i],
                parent_hash=None if parents is None else parents[i],
                stamp=stamp,
                buffer=rows[cid * row : (cid + 1) * row],
                nbytes=row,
            )
            for i, (key, cid, block_key) in enumerate(zip(keys, chunk_ids, block_keys, strict=True))
        ]

    def lookup(self, key: bytes, req_context: ReqContext) -> LookupResult:
        return _RESULT[self.cache.query(key)]

    def submit_store(self, job_metadata: TransferJob) -> None:
        keys = [bytes(k) for k in job_metadata.keys]
        chunk_ids = [int(c) for c in job_metadata.chunk_ids]
        present = {k for k in keys if self.cache.known_present(k)}
        todo = [(k, c) for k, c in zip(keys, chunk_ids, strict=True) if k not in present]
        self._jobs[job_metadata.job_id] = (keys, chunk_ids, present)
        ops = self._ops(job_metadata, [k for k, _ in todo], [c for _, c in todo], False)
        self.pool.submit(job_metadata.job_id, ops, is_load=False)

    def submit_load(self, job_metadata: TransferJob) -> None:
        keys = [bytes(k) for k in job_metadata.keys]
        chunk_ids = [int(c) for c in job_metadata.chunk_ids]
        self._jobs[job_metadata.job_id] = (keys, chunk_ids, set())
        block_keys = [self.namespace.block_key(k) for k in keys]
        self._journal_access(keys, block_keys, job_metadata.req_context)
        ops = self._ops(job_metadata, keys, chunk_ids, True, block_keys)
        self.pool.submit(job_metadata.job_id, ops, is_load=True)

    def get_finished_jobs(self) -> Iterable[JobResult]:
        results = []
        for done in self.pool.take_finished():
            keys, chunk_ids, _present = self._jobs.pop(done.job_id, ([], [], set()))
            failed_chunks = set(done.failed_block_ids)
            ok_keys = [k for k, c in zip(keys, chunk_ids, strict=True) if c not in failed_chunks]
            failed_keys = [k for k, c in zip(keys, chunk_ids, strict=True) if c in failed_chunks]
            if done.is_load and failed_keys:
                # Answer MISS from now on, so the request recomputes instead of retrying the same file.
                self.cache.mark_missing(failed_keys)
            if not done.is_load:
                # The pool reports a store ok only once its file was published or found there.
                self.cache.stored(ok_keys)
            results.append(
                JobResult(
                    job_id=done.job_id,
                    success=not failed_keys,
                    successful_keys=ok_keys,
                    transfer_time=done.seconds,
                    transfer_bytes=done.nbytes,
                )
            )
        return results

    def touch(self, keys: Collection[bytes], req_context: ReqContext) -> None:
        if self.journal is not None:
            keys = list(keys)
            self._journal_access(keys, [self.namespace.block_key(k) for k in keys], req_context)

    def _journal_access(self, keys: list[bytes], block_keys: list[BlockKey], req_context: ReqContext) -> None:
        """An access record per key, with its chain position, so the evictor can regroup a request's records
        (adaptive's shadows)."""
        if self.journal is not None:
            positions = chain_positions(keys, req_context, self.chunk_tokens)
            now = request_time(req_context)
            for block_key, pos in zip(block_keys, positions, strict=True):
                self.journal.record_access(block_key, now=now, chain_pos=pos)

    def take_events(self) -> Iterable[OffloadingEvent]:
        from connector.compat import storage_event

        stored, vanished = self.cache.take_verified()
        if stored:
            yield storage_event(stored, removed=False, ownership=self.tier_type)
        if vanished:
            yield storage_event(vanished, removed=True, ownership=self.tier_type)

    def has_pending_work(self) -> bool:
        return self.pool.pending_jobs() > 0 or not self.cache.idle()

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def drain_jobs(self) -> None:
        self.pool.wait(list(self._jobs))

    def config_info(self) -> dict[str, Any]:
        return {"kvfs_root": self.kvfs.root, "kvfs_namespace": self.namespace.name}

    @classmethod
    def config_info_keys(cls, tier_config: dict[str, Any]) -> tuple[str, ...]:
        return ("kvfs_root", "kvfs_namespace")

    def shutdown(self) -> None:
        self.pool.shutdown()
        self.cache.shutdown()
        # Release our views of vLLM's shared CPU region, so vLLM can close its mmap after us.
        self.copier = None  # type: ignore[assignment]
        self.rows = None  # type: ignore[assignment]
        if self.journal is not None:
            self.journal.close()


# Presence is re-exported for tests that poll the cache directly.
__all__ = ["KvfsTier", "Presence"]
