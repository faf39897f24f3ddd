"""Both entry points load through vLLM's own factories from configuration; bad settings fail clearly."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
from vllm.v1.kv_offload.factory import OffloadingSpecFactory  # noqa: E402
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory  # noqa: E402

from connector.config import ConfigError  # noqa: E402
from tests.connector.vllm_helpers import offloading_config  # noqa: E402

SPEC = {"spec_name": "KvfsOffloadingSpec", "spec_module_path": "connector.spec"}


def test_spec_loads_through_vllm_factory(tmp_path):
    from connector.manager import KvfsManager
    from connector.spec import KvfsOffloadingSpec

    config = offloading_config({**SPEC, "kvfs_root": str(tmp_path), "kvfs_journal": False})
    assert OffloadingSpecFactory.get_spec_cls(config.extra_config) is KvfsOffloadingSpec
    spec = OffloadingSpecFactory.create_spec(config)
    assert isinstance(spec, KvfsOffloadingSpec)
    manager = spec.get_manager()
    try:
        assert isinstance(manager, KvfsManager) and spec.get_manager() is manager
        fields = json.loads((tmp_path / spec.namespace.name / "config.json").read_text())
        assert fields["model_name"] == "meta-llama/Llama-3.1-8B" and fields["dtype"] == "bfloat16"
        assert fields["gpu_blocks_per_file"] == 4 and fields["kvfs_format"] == 1
    finally:
        manager.shutdown()


def test_fingerprint_changes_with_anything_that_changes_bytes(tmp_path):
    from connector.spec import KvfsOffloadingSpec

    extra = {**SPEC, "kvfs_root": str(tmp_path), "kvfs_journal": False}
    base = KvfsOffloadingSpec(offloading_config(extra)).namespace.name
    variants = [
        offloading_config(extra, dtype="float16"),
        offloading_config(extra, blocks_per_chunk=8),
        offloading_config(extra, tokens_per_block=32),
        offloading_config(extra, world_size=2),
        offloading_config(extra, kv_bytes_per_block=2048),
        offloading_config(extra, layers=3),
        offloading_config({**extra, "kvfs_model_revision": "abc123"}),
    ]
    names = {KvfsOffloadingSpec(c).namespace.name for c in variants}
    assert base not in names and len(names) == len(variants)
    assert KvfsOffloadingSpec(offloading_config(extra)).namespace.name == base  # deterministic


def test_worker_refuses_to_run_without_the_failure_channel(tmp_path):
    from connector.spec import KvfsOffloadingSpec

    spec = KvfsOffloadingSpec(offloading_config({**SPEC, "kvfs_root": str(tmp_path), "kvfs_journal": False}))
    with pytest.raises(RuntimeError, match="KvfsOffloadingConnector"):
        spec.get_worker(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"kvfs_root": "relative/dir"}, "absolute"),
        ({"kvfs_durabilty": "data"}, "unknown kvfs connector setting"),
        ({"kvfs_durability": "always"}, "kvfs_durability"),
        ({"kvfs_io_threads": -1}, "kvfs_io_threads"),
        ({"kvfs_store_budget": "soon"}, "bad kvfs connector setting"),
        ({"kvfs_gpu_checksums": "no"}, "kvfs_gpu_checksums must be true or false"),
        ({"kvfs_direct_io": 1}, "kvfs_direct_io must be true or false or auto"),
        ({"kvfs_idle_wait": "5s"}, "kvfs_idle_wait between 0 and 1s"),
        ({"kvfs_idle_wait": -0.001}, "kvfs_idle_wait between 0 and 1s"),
    ],
)
def test_bad_settings_are_rejected_with_the_key_named(extra, match):
    from connector.spec import KvfsOffloadingSpec

    with pytest.raises(ConfigError, match=match):
        KvfsOffloadingSpec(offloading_config({**SPEC, **extra}))


def test_tier_loads_through_vllm_factory(tmp_path):
    from connector.tier import KvfsTier

    primary = torch.zeros(8, 4096, dtype=torch.uint8)
    spec = type("Spec", (), {"config": offloading_config({})})()
    tier_config = {
        "type": "KvfsTier",
        "module_path": "connector.tier",
        "root": str(tmp_path),
        "journal": False,
    }
    assert SecondaryTierFactory.get_tier_class(tier_config) is KvfsTier
    tier = SecondaryTierFactory.create_secondary_tier(tier_config, memoryview(primary.numpy()), spec)
    try:
        assert isinstance(tier, KvfsTier) and tier.block_size_bytes == 4096
        assert (tmp_path / tier.namespace.name / "config.json").exists()
    finally:
        tier.shutdown()


def test_unsupported_vllm_version_is_a_clear_error(monkeypatch):
    import vllm

    import connector.compat as compat

    monkeypatch.setattr(vllm, "__version__", "0.31.0")
    with pytest.raises(ImportError, match="0.32.x and 0.33.x"):
        importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)
    assert compat.VLLM_MINOR in compat.SUPPORTED_MINORS


def test_nondeterministic_hash_seed_warns_loudly(tmp_path, monkeypatch):
    from connector.naming import warn_unshareable

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    assert any("PYTHONHASHSEED" in w for w in warn_unshareable(str(tmp_path), "m_0123456789ab", "xxhash"))
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    assert warn_unshareable(str(tmp_path), "m_0123456789ab", "xxhash") == []


def test_replicas_with_another_hash_algo_warn(tmp_path, monkeypatch):
    from connector.spec import KvfsOffloadingSpec

    extra = {**SPEC, "kvfs_root": str(tmp_path), "kvfs_journal": False}
    monkeypatch.setattr("connector.spec.current_hash_algo", lambda: "sha256_cbor")
    first = KvfsOffloadingSpec(offloading_config(extra))
    assert first.namespace.publish_config("sha256_cbor") == []  # the same algorithm again: nothing to say
    # Scheduler and workers agree on the namespace whether or not they know the algorithm.
    monkeypatch.setattr("connector.spec.current_hash_algo", lambda: None)
    assert KvfsOffloadingSpec(offloading_config(extra)).namespace.name == first.namespace.name
    warnings = first.namespace.publish_config("sha256")
    assert len(warnings) == 1 and "sha256_cbor" in warnings[0]


def test_sync_loads_refused_where_their_failures_cannot_be_recomputed(tmp_path):
    from connector.spec import KvfsOffloadingSpec

    extra = {**SPEC, "kvfs_root": str(tmp_path), "kvfs_journal": False, "sync_load_budget_bytes": 1 << 20}
    with pytest.raises(ConfigError, match="sync_load_budget_bytes"):
        KvfsOffloadingSpec(offloading_config(extra, groups=2))
    assert KvfsOffloadingSpec(offloading_config(extra, groups=1)).namespace.name


def test_boolean_settings() -> None:
    from connector.config import KvfsConnectorConfig

    default = KvfsConnectorConfig.from_extra({"kvfs_root": "/x"})
    assert default.gpu_checksums is True and default.cuda_graphs is True
    cfg = KvfsConnectorConfig.from_extra(
        {
            "kvfs_root": "/x",
            "kvfs_gpu_checksums": False,
            "kvfs_journal": "false",
            "kvfs_direct_io": "True",
            "kvfs_cuda_graphs": "false",
        }
    )
    assert (cfg.gpu_checksums, cfg.journal, cfg.direct_io, cfg.cuda_graphs) == (False, False, True, False)


def test_direct_io_auto_probes_the_root_and_is_the_tiers_default(tmp_path, monkeypatch):
    """kvfs_direct_io "auto" uses O_DIRECT exactly where a probe of the root passes, as vLLM's own fs tier does;
    the tier defaults to it, the direct spec keeps buffered I/O unless told."""
    from connector import config
    from kvfs import blockfile

    root = str(tmp_path)
    assert config.KvfsConnectorConfig.from_extra({"kvfs_root": root}).use_direct_io() is False
    auto = config.KvfsConnectorConfig.from_extra({"kvfs_root": root, "kvfs_direct_io": "auto"})
    assert auto.direct_io is None
    assert auto.use_direct_io() is blockfile.probe_o_direct(root)
    assert (
        config.KvfsConnectorConfig.from_extra({"kvfs_root": root}, direct_io_default=None).direct_io is None
    )
    for answer in (True, False):
        monkeypatch.setattr(blockfile, "probe_o_direct", lambda _root, answer=answer: answer)
        primary = torch.zeros(8, 4096, dtype=torch.uint8)
        spec = type("Spec", (), {"config": offloading_config({})})()
        cfg = {"type": "KvfsTier", "module_path": "connector.tier", "root": root, "journal": False}
        tier = SecondaryTierFactory.create_secondary_tier(cfg, memoryview(primary.numpy()), spec)
        try:
            assert tier.pool.direct is answer
        finally:
            tier.shutdown()
