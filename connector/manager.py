"""Scheduler-side manager of the direct spec: lookups from the existence cache (never blocking the scheduler
thread), access records in the journal, and KV events only for blocks verified on the mount."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from connector.access import AccessRecorder
from connector.chain import chain_positions, parent_keys, request_time
from connector.compat import (
    LoadStoreSpec,
    LookupResult,
    OffloadingEvent,
    OffloadingManager,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    storage_event,
)
from connector.lookup import ExistenceCache, Presence
from connector.naming import NamespaceDir

if TYPE_CHECKING:
    from kvfs.journal import JournalWriter

_RESULT = {
    Presence.HIT: LookupResult.HIT,
    Presence.MISS: LookupResult.MISS,
    Presence.RETRY: LookupResult.RETRY,
}


class KvfsLoadStoreSpec(LoadStoreSpec):
    """The offload keys of a job, in the order of the GPU blocks of its GPULoadStoreSpec (picklable); for stores,
    `chain_pos` (parallel to keys) holds each chunk's prefix-chain position for the journal (-1: unknown) and
    `parents` the request's key of the chunk before each (None: unknown); `stamp` the request's journal time
    (connector/chain.py `request_time`; None: each record's own)."""

    def __init__(
        self,
        keys: Sequence[bytes],
        chain_pos: Sequence[int] | None = None,
        parents: Sequence[bytes | None] | None = None,
        stamp: float | None = None,
    ) -> None:
        self.keys = [bytes(k) for k in keys]
        self.stamp = None if stamp is None else float(stamp)
        self.chain_pos = [int(p) for p in chain_pos] if chain_pos is not None else None
        if self.chain_pos is not None and len(self.chain_pos) != len(self.keys):
            raise ValueError(f"{len(self.chain_pos)} chain positions for {len(self.keys)} keys")
        self.parents = [None if p is None else bytes(p) for p in parents] if parents is not None else None
        if self.parents is not None and len(self.parents) != len(self.keys):
            raise ValueError(f"{len(self.parents)} parents for {len(self.keys)} keys")

    def __repr__(self) -> str:
        return f"KvfsLoadStoreSpec({len(self.keys)} keys)"


class KvfsManager(OffloadingManager):
    def __init__(
        self,
        namespace: NamespaceDir,
        *,
        lookup_ttl_s: float,
        journal: JournalWriter | None,
        config_info: dict[str, Any] | None = None,
        chunk_tokens: Mapping[int, int] | None = None,
        idle_wait_s: float = 0.0,
    ) -> None:
        self.namespace = namespace
        self.idle_wait_s = idle_wait_s
        # Key group id -> tokens per chunk, to turn vLLM's per-key end positions into chain positions.
        self.chunk_tokens = dict(chunk_tokens or {})
        self.cache = ExistenceCache(namespace.paths_all_ranks, ttl_s=lookup_ttl_s)
        self.journal = journal
        self.recorder = AccessRecorder(journal, namespace) if journal is not None else None
        self._lock = threading.Lock()
        self._config_info = config_info or {}

    # vLLM 0.33 enters this around lookup()+prepare_load(); 0.32 never does.
    @property
    def lock(self) -> AbstractContextManager[Any]:
        return self._lock

    def lookup(self, key: bytes, req_context: ReqContext) -> LookupResult:
        return _RESULT[self.cache.query(key)]

    def prepare_load(self, keys: Collection[bytes], req_context: ReqContext) -> LoadStoreSpec:
        self._record_access(keys, req_context)
        return KvfsLoadStoreSpec(list(keys))

    def complete_load(self, keys: Collection[bytes], req_context: ReqContext) -> None:
        # A load that missed (evicted, corrupt) is invisible here: re-check the files so the next request
        # does not count on a block that is gone.
        self.cache.refresh(keys)

    def touch(self, keys: Collection[bytes], req_context: ReqContext) -> None:
        self._record_access(keys, req_context)

    def _record_access(self, keys: Iterable[bytes], req_context: ReqContext) -> None:
        if self.recorder is not None:
            # With their chain positions, so the evictor can regroup a request's records (adaptive's shadows).
            keys = list(keys)
            self.recorder.record(
                keys, chain_positions(keys, req_context, self.chunk_tokens), now=request_time(req_context)
            )

    def flush_journal(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()

    def prepare_store(self, keys: Collection[bytes], req_context: ReqContext) -> PrepareStoreOutput | None:
        # Keys known to be on the mount need no GPU copy; the workers still dedupe racing writers (EXISTS).
        to_store = [k for k in keys if not self.cache.known_present(k)]
        spec = KvfsLoadStoreSpec(
            to_store,
            chain_positions(to_store, req_context, self.chunk_tokens),
            parent_keys(to_store, req_context, self.chunk_tokens),
            request_time(req_context),
        )
        return PrepareStoreOutput(keys_to_store=to_store, store_spec=spec, evicted_keys=[])

    def complete_store(self, keys: Collection[bytes], req_context: ReqContext, success: bool = True) -> None:
        # Announce only what is verified on the mount: a dropped or failed store stays unannounced.
        self.cache.verify_stored(keys)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def take_events(self) -> Iterable[OffloadingEvent]:
        stored, vanished = self.cache.take_verified()
        if stored:
            yield storage_event(stored, removed=False)
        if vanished:
            yield storage_event(vanished, removed=True)

    def wait_idle_step(self) -> None:
        """On an engine step that runs no forward pass: wait (up to `idle_wait_s`, the GIL released) for the
        existence checks that a request waits on, instead of letting the engine loop spin past them."""
        if self.idle_wait_s:
            self.cache.wait_progress(self.idle_wait_s)

    def has_pending_work(self) -> bool:
        return not self.cache.idle()

    def reset_cache(self) -> None:
        self.cache.clear()

    def config_info(self) -> list[dict[str, Any]]:
        return [dict(self._config_info)]

    def shutdown(self) -> None:
        self.cache.shutdown()
        if self.recorder is not None:
            self.recorder.close()
