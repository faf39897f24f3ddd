"""A real vLLM Scheduler driven with the kvfs connector (scheduler side) and a worker-side connector over CPU
KV tensors, the way vLLM's own offloading-connector unit tests drive a mock spec -- here nothing is mocked:
blocks go through real files.  Replica A computes a prompt and stores it; replica B (fresh GPU cache, same
root) loads it; replica C loses a file between lookup and load and recomputes, without crashing."""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.config import (  # noqa: E402
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
    set_current_vllm_config,
)
from vllm.distributed.kv_transfer.kv_connector.v1 import KVConnectorRole  # noqa: E402
from vllm.forward_context import ForwardContext  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from connector.connector import KvfsConnectorWorker, KvfsOffloadingConnector  # noqa: E402
from kvfs.journal import JournalReader, RecordKind  # noqa: E402

GPU_BLOCK = 16
CHUNK = 64  # tokens per file: 4 GPU blocks
NUM_BLOCKS = 64
LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]
KV_HEADS, HEAD = 2, 16
EOS = 999

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD,
    "num_hidden_layers": len(LAYERS),
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
    "eos_token_id": EOS,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # A local config: the ModelConfig is built without the hub.
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return str(path)


class Replica:
    """One engine: scheduler + one worker-side connector over CPU KV tensors."""

    def __init__(
        self, model_dir: str, root: str, seed: int, batch_tokens: int = 2048, **settings: object
    ) -> None:
        self.vllm_config = VllmConfig(
            model_config=ModelConfig(
                model=model_dir, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=2048
            ),
            cache_config=CacheConfig(block_size=GPU_BLOCK, enable_prefix_caching=True),
            scheduler_config=SchedulerConfig(
                max_num_seqs=8,
                max_num_batched_tokens=batch_tokens,
                max_model_len=2048,
                enable_chunked_prefill=True,
                is_encoder_decoder=False,
            ),
            device_config=DeviceConfig("cpu"),
            kv_transfer_config=KVTransferConfig(
                kv_connector="KvfsOffloadingConnector",
                kv_connector_module_path="connector.connector",
                kv_role="kv_both",
                kv_load_failure_policy="recompute",
                kv_connector_extra_config={
                    "spec_name": "KvfsOffloadingSpec",
                    "spec_module_path": "connector.spec",
                    "block_size": CHUNK,
                    "kvfs_root": root,
                    "kvfs_io_threads": 2,
                    "kvfs_lookup_ttl": 0.05,
                    **settings,
                },
            ),
        )
        self.vllm_config.cache_config.num_gpu_blocks = NUM_BLOCKS
        spec = FullAttentionSpec(
            block_size=GPU_BLOCK, num_kv_heads=KV_HEADS, head_size=HEAD, dtype=torch.bfloat16
        )
        self.kv_cache_config = KVCacheConfig(
            num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(LAYERS, spec)]
        )
        with set_current_vllm_config(self.vllm_config):
            self.scheduler = Scheduler(
                vllm_config=self.vllm_config,
                kv_cache_config=self.kv_cache_config,
                structured_output_manager=StructuredOutputManager(self.vllm_config),
                block_size=GPU_BLOCK,
                log_stats=True,
            )
            self.worker = KvfsOffloadingConnector(
                self.vllm_config, KVConnectorRole.WORKER, self.kv_cache_config
            )
            g = torch.Generator().manual_seed(seed)
            # (blocks, tokens, K/V, heads, dim) bf16: one block's page is contiguous, as in vLLM's canonical view.
            self.kv = {
                name: torch.randn(NUM_BLOCKS, GPU_BLOCK, 2, KV_HEADS, HEAD, generator=g).to(torch.bfloat16)
                for name in LAYERS
            }
            self.worker.register_kv_caches(self.kv)
        assert isinstance(self.scheduler.connector, KvfsOffloadingConnector)
        assert isinstance(self.worker.connector_worker, KvfsConnectorWorker)
        init_none_hash(sha256)
        self.hasher = get_request_block_hasher(GPU_BLOCK, sha256)
        self.ctx = ForwardContext(no_compile_layers={}, attn_metadata={}, slot_mapping={})
        self.block_ids: dict[str, list[int]] = {}
        self.scheduled: dict[str, list[int]] = {}
        self.invalid_reported: set[int] = set()
        self.transfer_bytes = {"load": 0, "store": 0}
        self.before_worker = None  # hook: runs after schedule(), before the worker acts
        self.pause = (
            0.02  # between a step's transfers and their results (0: an engine loop that never pauses)
        )
        self.steps: list[tuple[int, float]] = []  # (tokens scheduled, seconds in get_transfer_results) a step

    def add(self, req_id: str, tokens: list[int], max_tokens: int = 2) -> None:
        params = SamplingParams(max_tokens=max_tokens)
        req = Request(
            request_id=req_id,
            prompt_token_ids=tokens,
            sampling_params=params,
            pooling_params=None,
            block_hasher=self.hasher,
        )
        self.scheduler.add_request(req)

    def step(self) -> None:
        out = self.scheduler.schedule()
        for req_id, n in out.num_scheduled_tokens.items():
            self.scheduled.setdefault(req_id, []).append(n)
        for req_id in list(self.scheduler.requests):
            ids = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
            if ids:
                self.block_ids[req_id] = list(ids)
        if self.before_worker is not None:
            self.before_worker(out)
        meta = out.kv_connector_metadata
        self.worker.handle_preemptions(meta)
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(self.ctx)
        if out.total_num_scheduled_tokens > 0:
            self.worker.wait_for_save()
        time.sleep(self.pause)  # the I/O threads work between steps, as during a forward pass
        started = time.monotonic()
        results = self.worker.get_transfer_results(out.finished_req_ids)
        self.steps.append((out.total_num_scheduled_tokens, time.monotonic() - started))
        invalid = self.worker.get_block_ids_with_load_errors()
        self.invalid_reported |= invalid
        worker_meta = self.worker.build_connector_worker_meta()
        if worker_meta is not None:  # what vLLM turns into vllm:kv_offload_{load,store}_bytes
            self.transfer_bytes["load"] += worker_meta.transfer_stats.load.bytes
            self.transfer_bytes["store"] += worker_meta.transfer_stats.store.bytes
        self.worker.clear_connector_metadata()
        running = [r.request_id for r in self.scheduler.running if r.request_id in out.num_scheduled_tokens]
        output = ModelRunnerOutput(
            req_ids=running,
            req_id_to_index={r: i for i, r in enumerate(running)},
            sampled_token_ids=[[7] for _ in running],
            kv_connector_output=KVConnectorOutput(
                finished_sending=results.finished_sending,
                finished_recving=results.finished_recving,
                failed_recving=results.failed_recving,
                invalid_block_ids=invalid,
                kv_connector_worker_meta=worker_meta,
            ),
        )
        self.scheduler.update_from_output(out, output)

    def run_until_done(self, max_steps: int = 400) -> None:
        for _ in range(max_steps):
            if not self.scheduler.requests and not self.scheduler.connector.has_pending_push_work():
                return
            self.step()
        raise AssertionError(f"requests still pending: {list(self.scheduler.requests)}")

    def page(self, block_id: int) -> list[torch.Tensor]:
        return [t[block_id].clone() for t in self.kv.values()]

    def shutdown(self) -> None:
        self.worker.shutdown()
        self.scheduler.shutdown()


PROMPT = list(range(1, 4 * CHUNK + 1))  # 4 full chunks
BRANCH = PROMPT[: 2 * CHUNK] + list(range(500, 500 + 2 * CHUNK))  # shares PROMPT's first 2 chunks


@pytest.fixture
def stored(model_dir, tmp_path):
    a = Replica(model_dir, str(tmp_path), seed=1)
    a.add("a1", PROMPT)
    a.run_until_done()
    files = sorted(p for p in tmp_path.rglob("*.kvfs") if p.is_file())
    assert len(files) == 4, files
    yield a, tmp_path
    a.shutdown()


def test_prompt_is_stored_then_loaded_by_another_replica(stored, model_dir):
    a, root = stored
    b = Replica(model_dir, str(root), seed=2)
    try:
        b.add("b1", PROMPT)
        b.run_until_done()
        # B loaded 4 chunks minus the last token's block boundary: it computed only what it could not load.
        assert sum(b.scheduled["b1"]) < len(PROMPT)
        a_blocks, b_blocks = a.block_ids["a1"], b.block_ids["b1"]
        loaded = (len(PROMPT) - 1) // GPU_BLOCK  # vLLM always recomputes the last prompt token
        for i in range(loaded):
            for pa, pb in zip(a.page(a_blocks[i]), b.page(b_blocks[i]), strict=True):
                assert torch.equal(pa.view(torch.int16), pb.view(torch.int16))
        assert not b.invalid_reported
        page = GPU_BLOCK * 2 * KV_HEADS * HEAD * 2 * len(LAYERS)
        assert a.transfer_bytes["store"] == 4 * (CHUNK // GPU_BLOCK) * page  # vLLM's offload metrics are fed
        assert b.transfer_bytes["load"] == 4 * (CHUNK // GPU_BLOCK) * page
    finally:
        b.shutdown()


def test_idle_steps_wait_for_a_slow_load_instead_of_spinning(stored, model_dir, monkeypatch):
    """vLLM's engine loop steps without pause while a request waits for its KV.  On a step that schedules no
    tokens the connector waits (up to kvfs_idle_wait, the GIL released) for lookups and transfers instead, so the
    I/O threads are not left queueing for the GIL; a step that runs a forward pass never waits."""
    import connector.iopool as iopool

    _a, root = stored
    slow_s, wait_s = 0.6, 0.15
    real_load = iopool.load_block

    def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(slow_s / 4)  # slow storage: each of the 4 files takes 0.15 s (2 I/O threads)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(iopool, "load_block", slow_load)
    b = Replica(model_dir, str(root), seed=2, kvfs_idle_wait=wait_s)
    b.pause = 0.0
    try:
        b.add("b1", PROMPT)
        b.add(
            "other", list(range(5000, 5000 + 3 * GPU_BLOCK)), max_tokens=40
        )  # decodes meanwhile: busy steps
        b.run_until_done()
        assert sum(b.scheduled["b1"]) < len(PROMPT)  # b1 was loaded
        assert any(n == 0 for n, _ in b.steps)  # b1 waited for its load on idle steps
        busy = [s for n, s in b.steps if n > 0]
        assert busy and max(busy) < wait_s, busy  # a step with a forward pass never waits
        # Without the wait the loop would spin thousands of times through a 0.3 s load; with it, each idle step
        # ends when a transfer finishes or after wait_s.
        idle = [n for n, _ in b.steps if n == 0]
        assert len(idle) < 10 + 2 * slow_s / wait_s, len(idle)
    finally:
        b.shutdown()


def test_idle_wait_zero_keeps_vllms_spinning_loop(stored, model_dir, monkeypatch):
    """kvfs_idle_wait=0 turns the wait off (the control for the test above): the same slow load then costs
    many idle steps."""
    import connector.iopool as iopool

    _a, root = stored
    real_load = iopool.load_block

    def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(iopool, "load_block", slow_load)
    b = Replica(model_dir, str(root), seed=2, kvfs_idle_wait=0)
    b.pause = 0.0
    try:
        b.add("b1", PROMPT)
        b.run_until_done(max_steps=100_000)
        assert sum(b.scheduled["b1"]) < len(PROMPT)
        assert len([n for n, _ in b.steps if n == 0]) > 100, len(b.steps)
    finally:
        b.shutdown()


def test_file_deleted_between_lookup_and_load_is_recomputed(stored, model_dir):
    a, root = stored
    c = Replica(model_dir, str(root), seed=3)
    victim = sorted(p for p in root.rglob("*.kvfs") if p.is_file())
    deleted: list[str] = []

    def evict_after_lookup(out) -> None:  # type: ignore[no-untyped-def]
        # The load job is in this step's metadata: the lookup said HIT; now the evictor deletes a chunk.
        if out.kv_connector_metadata.load_jobs and not deleted:
            for path in victim[2:]:
                os.unlink(path)
                deleted.append(str(path))

    c.before_worker = evict_after_lookup
    try:
        c.add("c1", PROMPT)
        c.run_until_done()
        assert deleted, "the load was never issued"
        assert c.invalid_reported, "the failed load was not reported to vLLM"
        # Recomputed: C scheduled more prompt tokens than a full hit would need, and finished normally.
        assert sum(c.scheduled["c1"]) > len(PROMPT) - 2 * CHUNK
        assert "c1" not in c.scheduler.requests
    finally:
        c.shutdown()


@pytest.mark.parametrize("batch_tokens", [2048, 96], ids=["one-step", "chunked-prefill"])
def test_stores_journal_prefix_chain_positions(model_dir, tmp_path, batch_tokens):
    """Each stored chunk is journaled with its index in the prompt's prefix chain, also when chunked prefill
    hands the scheduler's prepare_store one chunk at a time (so the index inside one call is not the position)."""
    a = Replica(model_dir, str(tmp_path), seed=4, batch_tokens=batch_tokens)
    try:
        # The harness samples a token on every step, partial prefills too: leave room for the whole prompt.
        a.add("a1", PROMPT, max_tokens=8)
        a.run_until_done()
        if batch_tokens < len(PROMPT):
            assert a.scheduled["a1"][:2] == [96, 96], a.scheduled  # the prompt really was split over steps
        # The next turn of another conversation: the first two chunks shared, two new ones.
        a.add("a2", BRANCH, max_tokens=8)
        a.run_until_done()
    finally:
        a.shutdown()  # closes the workers' journals

    def chunk_hashes(prompt: list[int]) -> list[str]:
        hashes = Request(
            request_id="h",
            prompt_token_ids=prompt,
            sampling_params=SamplingParams(max_tokens=1),
            pooling_params=None,
            block_hasher=a.hasher,
        ).block_hashes
        per_chunk = CHUNK // GPU_BLOCK
        # vLLM keys a chunk by the hash of its last block.
        return [bytes(hashes[(i + 1) * per_chunk - 1]).hex() for i in range(len(prompt) // CHUNK)]

    first, second = chunk_hashes(PROMPT), chunk_hashes(BRANCH)
    assert first[:2] == second[:2] and first[2] != second[2]
    stores = [r for r in JournalReader(tmp_path).read({}).records if r.kind == RecordKind.STORE]
    got = {r.key.block_hash: r.chain_pos for r in stores}
    assert len(stores) == 6 == len(got)
    # In prompt order (the I/O threads journal in completion order, which may differ).
    assert [got.get(h) for h in first] == [0, 1, 2, 3] and [got.get(h) for h in second[2:]] == [2, 3]
    # Every chunk records the chunk before it, also the first chunk of a store job (chunked prefill stores a
    # chunk per step) and the first chunk a request adds behind a prefix stored earlier: what the catalog
    # needs to mark orphans and superseded branches.
    parents = {r.key.block_hash: r.parent for r in stores}
    assert [parents[h] for h in first] == [None, *first[:3]]
    assert [parents[h] for h in second[2:]] == [first[1], second[2]]
