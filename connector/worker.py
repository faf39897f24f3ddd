"""Worker side of the direct spec: turns vLLM jobs (GPU block ids + our key list) into per-file operations on
the I/O pool, and reports results (with the GPU blocks of failed loads, for the connector to recompute)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from connector import metrics
from connector.chain import chain_parents
from connector.compat import (
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LoadStoreSpec,
    OffloadingWorker,
    TransferResult,
)
from connector.copier import GroupCopier
from connector.iopool import FileOp, IoPool
from connector.manager import KvfsLoadStoreSpec
from connector.naming import NamespaceDir, block_hash_hex, file_identity_key, offload_key_parts
from kvfs.blockfile import BlockIdentity

log = logging.getLogger("kvfs.connector")


def copiers_for(kv_caches: CanonicalKVCaches) -> list[GroupCopier]:
    """One copier per offloaded KV group, over vLLM's canonical int8 `(num_blocks, page)` tensors."""
    copiers = []
    for refs in kv_caches.group_data_refs:
        tensors = [kv_caches.tensors[r.tensor_idx].tensor for r in refs]
        copiers.append(GroupCopier([t.view(torch.int8) for t in tensors], [r.page_size_bytes for r in refs]))
    return copiers


def plan_file_ops(
    *,
    job_id: int,
    is_load: bool,
    keys: Sequence[bytes],
    gpu_spec: GPULoadStoreSpec,
    group_index: dict[int, int],
    copiers: Sequence[GroupCopier],
    blocks_per_chunk: int,
    namespace: NamespaceDir,
    rank: int,
    chain_pos: Sequence[int] | None = None,
    parents: Sequence[bytes | None] | None = None,
    stamp: float | None = None,
) -> list[FileOp]:
    """Split a job into one operation per block file.

    Blocks of group g in `gpu_spec` are consecutive logical blocks starting at `block_indices[g]`; the keys of
    group g (in order) are the chunks they fall in, the first one possibly entered part-way.  `chain_pos`, parallel
    to `keys`, gives each chunk's prefix-chain position for the journal (absent: -1, unknown), `parents` the
    request's key of the chunk before each (None: inferred from the job's own keys, or unknown), `stamp` the time
    the journal records carry (the request's; None: each file's own)."""
    positions = dict(zip(keys, chain_pos, strict=True)) if chain_pos is not None else {}
    parent_hashes: dict[bytes, str | None] = {}
    if chain_pos is not None and not is_load:
        hashes = chain_parents(keys, chain_pos, block_hash_hex, parents)
        parent_hashes = dict(zip(keys, hashes, strict=True))
    keys_by_group: dict[int, list[bytes]] = {}
    for key in keys:
        _, group_id = offload_key_parts(key)
        keys_by_group.setdefault(group_index[group_id], []).append(key)
    ops: list[FileOp] = []
    block_ids = [int(b) for b in gpu_spec.block_ids]
    cursor = 0
    for g, (size, start) in enumerate(zip(gpu_spec.group_sizes, gpu_spec.block_indices, strict=True)):
        ids = block_ids[cursor : cursor + size]
        cursor += size
        if size == 0:
            continue
        group_keys = keys_by_group.get(g, [])
        skip = start % blocks_per_chunk
        pos = 0
        for i, key in enumerate(group_keys):
            first = skip if i == 0 else 0
            count = min(blocks_per_chunk - first, size - pos)
            if count <= 0:
                break
            chunk_ids = ids[pos : pos + count]
            pos += count
            if is_load:
                # Files hold whole chunks; a load may start or end inside one.
                file_first, file_blocks = 0, blocks_per_chunk
            else:
                file_first, file_blocks = first, count
            block_key = namespace.block_key(key, rank)
            ops.append(
                FileOp(
                    job_id=job_id,
                    is_load=is_load,
                    path=namespace.path_of(block_key),
                    ident=BlockIdentity(
                        namespace.fingerprint, file_identity_key(key, file_first, file_blocks)
                    ),
                    copier=copiers[g],
                    block_ids=chunk_ids,
                    first=first if is_load else 0,
                    file_blocks=file_blocks,
                    block_key=block_key,
                    chain_pos=positions.get(key, -1),
                    parent_hash=parent_hashes.get(key),
                    stamp=stamp,
                )
            )
        if pos != size:
            raise ValueError(f"job {job_id}: {size} GPU blocks of group {g} but keys cover only {pos}")
    return ops


class KvfsWorker(OffloadingWorker):
    def __init__(
        self,
        *,
        kv_caches: CanonicalKVCaches,
        namespace: NamespaceDir,
        rank: int,
        group_index: dict[int, int],
        blocks_per_chunk: int,
        pool_kwargs: dict,
        idle_wait_s: float = 0.0,
    ) -> None:
        self.namespace = namespace
        self.idle_wait_s = idle_wait_s
        self.rank = rank
        self.group_index = group_index
        self.blocks_per_chunk = blocks_per_chunk
        self.copiers = copiers_for(kv_caches)
        device = kv_caches.tensors[0].tensor.device
        max_file = max(c.payload_bytes(blocks_per_chunk) for c in self.copiers)
        self.pool = IoPool(max_file_bytes=max_file, device=device, **pool_kwargs)
        for copier in self.copiers:  # compile the copy kernels before the first request needs them
            copier.warm_up(blocks_per_chunk)
        # ... and capture every staging slot's load graphs, so the first hit runs as fast as later ones.
        self.load_graphs = self.pool.warm_up_loads(self.copiers, blocks_per_chunk)
        # job id -> GPU blocks of its failed loads; read by KvfsOffloadingConnector.
        self.failed_load_blocks: dict[int, list[int]] = {}
        log.info(
            "kvfs worker rank %d: namespace %s, %d I/O threads, %d MiB staging, %d group(s), Triton copies: %s, "
            "payload checksums on the %s",
            rank,
            namespace.name,
            self.pool.threads,
            self.pool.staging_bytes >> 20,
            len(self.copiers),
            [c.triton for c in self.copiers],
            "GPU" if self.pool.device_checksums else "CPU",
        )

    def _ops(self, job_id: int, is_load: bool, spec: LoadStoreSpec, gpu: GPULoadStoreSpec) -> list[FileOp]:
        if not isinstance(spec, KvfsLoadStoreSpec):
            raise TypeError(f"kvfs worker got a {type(spec).__name__}, not a KvfsLoadStoreSpec")
        return plan_file_ops(
            job_id=job_id,
            is_load=is_load,
            keys=spec.keys,
            gpu_spec=gpu,
            group_index=self.group_index,
            copiers=self.copiers,
            blocks_per_chunk=self.blocks_per_chunk,
            namespace=self.namespace,
            rank=self.rank,
            chain_pos=spec.chain_pos,
            parents=spec.parents,
            stamp=spec.stamp,
        )

    def submit_store(self, job_id: int, src_spec: GPULoadStoreSpec, dst_spec: LoadStoreSpec) -> bool:
        try:
            ops = self._ops(job_id, False, dst_spec, src_spec)
        except (TypeError, ValueError, KeyError):
            # vLLM asserts on a refused submit: complete the job with nothing stored (never announced).
            log.exception("kvfs: cannot plan store job %d; storing nothing", job_id)
            metrics.STORES.labels("failed").inc()
            ops = []
        if self.pool.cuda:
            # Stores run after everything already queued on the compute stream (the KV being written).
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.pool.device))
            for op in ops:
                op.event = event
        self.pool.submit(job_id, ops, is_load=False)
        return True

    def submit_load(
        self, job_id: int, src_spec: LoadStoreSpec, dst_spec: GPULoadStoreSpec, expedited: bool = False
    ) -> bool:
        try:
            ops = self._ops(job_id, True, src_spec, dst_spec)
        except (TypeError, ValueError, KeyError):
            log.exception("kvfs: cannot plan load job %d; reporting all its blocks as failed", job_id)
            self.pool.submit(job_id, [], is_load=True)
            self.failed_load_blocks[job_id] = [int(b) for b in dst_spec.block_ids]
            return True
        self.pool.submit(job_id, ops, is_load=True)
        return True

    def get_finished(self) -> list[TransferResult]:
        results = []
        for done in self.pool.take_finished():
            if done.is_load and done.failed_block_ids:
                self.failed_load_blocks.setdefault(done.job_id, []).extend(done.failed_block_ids)
            failed = done.is_load and bool(self.failed_load_blocks.get(done.job_id))
            results.append(
                TransferResult(
                    job_id=done.job_id,
                    success=not failed and done.success if done.is_load else done.success,
                    transfer_size=done.nbytes,
                    transfer_time=done.seconds,
                )
            )
        return results

    def wait_idle_step(self) -> None:
        """On an engine step that runs no forward pass: wait (up to `idle_wait_s`, the GIL released) for a
        transfer to finish.  vLLM's engine loop otherwise steps without pause while a request waits for its KV,
        and a thread that never blocks keeps the I/O threads queueing for the GIL after every read and copy."""
        if self.idle_wait_s:
            self.pool.wait_progress(self.idle_wait_s)

    def wait(self, job_ids: set[int]) -> None:
        self.pool.wait(job_ids)

    def shutdown(self) -> None:
        self.pool.shutdown()
        if self.pool.journal is not None:
            self.pool.journal.close()
