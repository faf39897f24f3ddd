"""`KvfsOffloadingConnector`: vLLM's OffloadingConnector plus a failure channel for loads.

vLLM's offloading worker asserts that every transfer succeeded (vLLM issues #39732, #52838).  A kvfs block file
can vanish (evicted), be truncated, corrupt or foreign between lookup and load, so this subclass replaces the
worker-side result handling: a failed load still completes its job (the scheduler releases the request), and its
GPU blocks are reported through `get_block_ids_with_load_errors()` (one KV group) or the request through
`failed_recving` (several groups), so `kv_load_failure_policy=recompute` recomputes exactly those tokens.
Failed or dropped stores complete silently: the manager announces only blocks verified on the mount.

It also marks the steps that run no forward pass (`KvfsConnectorMetadata.idle_step`).  vLLM's engine loop
steps without pause while a request waits for its KV; on such a step the scheduler side waits briefly for the
lookups and the worker side for the transfers in flight, the GIL released, instead of spinning: a thread that
never blocks makes every I/O thread queue for the GIL (up to the 5 ms switch interval) after each read and copy.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from connector.compat import (
    KVConnectorRole,
    KVConnectorTransferResults,
    OffloadingConnector,
    OffloadingConnectorMetadata,
    OffloadingConnectorWorker,
)
from connector.manager import KvfsManager
from connector.spec import KvfsOffloadingSpec
from connector.worker import KvfsWorker

log = logging.getLogger("kvfs.connector")


@dataclasses.dataclass
class KvfsConnectorMetadata(OffloadingConnectorMetadata):
    """vLLM's offloading metadata, plus whether the step schedules no tokens (no forward pass runs: the engine
    loop is only polling for transfers)."""

    idle_step: bool = False


class KvfsConnectorWorker(OffloadingConnectorWorker):
    """Worker-side connector that tolerates failed jobs (same private fields in vLLM 0.32 and 0.33)."""

    def __init__(self, *args: Any, single_group: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.single_group = single_group
        self.invalid_block_ids: set[int] = set()
        self.failed_recving: set[str] = set()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str], set[str]]:
        assert self.worker is not None
        finished_recving: set[str] = set()
        failed_blocks: dict[int, list[int]] = getattr(self.worker, "failed_load_blocks", {})
        for result in self.worker.get_finished():
            job_id = result.job_id
            is_load = job_id in self._load_jobs
            if result.success and result.transfer_time is not None and result.transfer_size is not None:
                stats = self._connector_worker_meta.transfer_stats
                (stats.load if is_load else stats.store).record(result.transfer_size, result.transfer_time)
            self._connector_worker_meta.mark_completed(job_id)
            req_id = self._load_jobs.pop(job_id, None)
            if is_load and not result.success:
                blocks = failed_blocks.pop(job_id, [])
                if self.single_group or req_id is None:
                    self.invalid_block_ids.update(blocks)
                else:
                    self.failed_recving.add(req_id)
                log.info(
                    "kvfs: load job %d (request %s) missed %d block(s): recomputed",
                    job_id,
                    req_id,
                    len(blocks),
                )
            else:
                failed_blocks.pop(job_id, None)
            if req_id is not None:
                finished_recving.add(req_id)
        return set(), finished_recving


class KvfsOffloadingConnector(OffloadingConnector):
    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        policy = getattr(vllm_config.kv_transfer_config, "kv_load_failure_policy", "fail")
        if policy != "recompute":
            log.warning(
                "kvfs: kv_load_failure_policy is %r: a block evicted between lookup and load fails its request "
                'instead of recomputing it. Set "kv_load_failure_policy":"recompute".',
                policy,
            )
        if self.connector_worker is not None:
            spec = self.connector_worker.spec
            if isinstance(spec, KvfsOffloadingSpec):
                spec.failure_channel = True
            single = len(spec.config.groups) == 1
            worker = KvfsConnectorWorker(
                spec, vllm_config, self.connector_worker.kv_cache_config, single_group=single
            )
            self.connector_worker = worker

    def build_connector_meta(self, scheduler_output: Any) -> Any:
        meta = super().build_connector_meta(scheduler_output)
        idle = scheduler_output.total_num_scheduled_tokens == 0
        manager = getattr(self.connector_scheduler, "manager", None)
        if idle and isinstance(manager, KvfsManager):
            manager.wait_idle_step()
        if type(meta) is OffloadingConnectorMetadata:
            fields = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
            meta = KvfsConnectorMetadata(**fields, idle_step=idle)
        return meta

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str], set[str]]:
        meta = self._connector_metadata
        connector_worker = self.connector_worker
        if (
            isinstance(meta, KvfsConnectorMetadata)
            and meta.idle_step
            and isinstance(connector_worker, KvfsConnectorWorker)
            and isinstance(connector_worker.worker, KvfsWorker)
        ):
            connector_worker.worker.wait_idle_step()
        return super().get_finished(finished_req_ids)

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        results = super().get_transfer_results(finished_req_ids)
        worker = self.connector_worker
        if isinstance(worker, KvfsConnectorWorker) and worker.failed_recving:
            results.failed_recving |= worker.failed_recving
            worker.failed_recving = set()
        return results

    def get_block_ids_with_load_errors(self) -> set[int]:
        worker = self.connector_worker
        if not isinstance(worker, KvfsConnectorWorker) or not worker.invalid_block_ids:
            return set()
        blocks, worker.invalid_block_ids = worker.invalid_block_ids, set()
        return blocks


__all__ = ["KVConnectorRole", "KvfsOffloadingConnector"]
