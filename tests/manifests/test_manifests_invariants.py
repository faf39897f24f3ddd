"""The invariants that break a kvfs deployment silently hold in every tree, and a broken copy is caught."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import manifest_checks as mc
import pytest
import yaml
from manifest_render import OLDEST_K8S, kustomization_dirs, rendered

TREES = sorted(kustomization_dirs())


def docs_of(tree: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(rendered(tree)))


def evictor(docs: list[dict[str, Any]]) -> mc.Workload:
    found = mc.evictors(docs)
    assert found, "no evictor"
    return found[0]


def engine(docs: list[dict[str, Any]]) -> mc.Workload:
    return mc.engines(docs)[0]


def edit_config(docs: list[dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to the evictor's config file as YAML, in the ConfigMap it is mounted from."""
    w = evictor(docs)
    key, text = mc.evictor_config_text(docs, w)  # type: ignore[misc]
    cm_name = next(v for v in w.pod["volumes"] if v["name"] == "config")["configMap"]["name"]
    cm = mc.find(docs, "ConfigMap", cm_name)[0]
    data = yaml.safe_load(text)
    change(data)
    cm["data"][key] = yaml.safe_dump(data)


def mount(w: mc.Workload, path: str) -> dict[str, Any]:
    return next(m for m in w.container["volumeMounts"] if m["mountPath"] == path)


def set_extra(w: mc.Workload, **extra: Any) -> None:
    args = w.container["args"]
    i = args.index(mc.KV_TRANSFER_FLAG) + 1
    cfg = json.loads(args[i])
    cfg["kv_connector_extra_config"].update(extra)
    args[i] = json.dumps(cfg)


@pytest.mark.parametrize("check", mc.ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("tree", TREES)
def test_shipped_trees_hold_every_invariant(tree: str, check: Callable[[Any], list[str]]) -> None:
    assert check(docs_of(tree)) == []


def test_every_tree_has_engines_and_one_kind_of_evictor() -> None:
    for tree in TREES:
        docs = docs_of(tree)
        assert mc.engines(docs), tree
        assert bool(mc.evictors(docs)) != bool(mc.cli_jobs(docs)), f"{tree}: daemon xor CronJob"


# --- each invariant catches the mistake it exists for ------------------------------------------------------


def _evictor_mounts_other_path(d):  # type: ignore[no-untyped-def]
    mount(evictor(d), "/mnt/files-storage")["mountPath"] = "/mnt/kv"


def _evictor_mounts_other_claim(d):  # type: ignore[no-untyped-def]
    next(v for v in evictor(d).pod["volumes"] if v["name"] == "kv-cache")["persistentVolumeClaim"][
        "claimName"
    ] = "kvfs-evictor-catalog"


def _shared_claim_rwo(d):  # type: ignore[no-untyped-def]
    mc.find(d, "PersistentVolumeClaim", "kvfs-shared")[0]["spec"]["accessModes"] = ["ReadWriteOnce"]


def _connector_root_elsewhere(d):  # type: ignore[no-untyped-def]
    set_extra(engine(d), kvfs_root="/mnt/kv")


def _evictor_root_elsewhere(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("root", "/mnt/files-storage/kv"))


def _typo_in_config(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("hihg_watermark", 90))


def _typo_in_env(d):  # type: ignore[no-untyped-def]
    evictor(d).container.setdefault("env", []).append({"name": "KVFS_HIGH_WATERMRK", "value": "90"})


def _config_the_evictor_refuses(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.update(high_watermark=60, low_watermark=70))


def _metrics_port_moved(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("metrics_port", 9500))


def _readiness_on_healthz(d):  # type: ignore[no-untyped-def]
    evictor(d).container["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _servicemonitor_wrong_port(d):  # type: ignore[no-untyped-def]
    mc.find(d, "ServiceMonitor", "kvfs-evictor")[0]["spec"]["endpoints"][0]["port"] = "http"


def _engine_port_moved(d):  # type: ignore[no-untyped-def]
    args = engine(d).container["args"]
    args[args.index("--port=8000")] = "--port=8080"


def _catalog_on_shared_mount(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("catalog", "sqlite:////mnt/files-storage/.kvfs/catalog.db"))


def _catalog_on_root_filesystem(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("catalog", "sqlite:////srv/catalog.db"))


def _catalog_on_emptydir(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("catalog", "sqlite:////tmp/catalog.db"))


def _database_password_in_configmap(d):  # type: ignore[no-untyped-def]
    edit_config(d, lambda c: c.__setitem__("catalog", "postgresql+psycopg://kvfs:hunter2@db/kvfs"))


def _writable_root_fs(d):  # type: ignore[no-untyped-def]
    evictor(d).container["securityContext"]["readOnlyRootFilesystem"] = False


def _privilege_escalation(d):  # type: ignore[no-untyped-def]
    evictor(d).container["securityContext"]["allowPrivilegeEscalation"] = True


def _capabilities_kept(d):  # type: ignore[no-untyped-def]
    evictor(d).container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}


def _engine_as_root(d):  # type: ignore[no-untyped-def]
    engine(d).pod["securityContext"]["runAsUser"] = 0


def _no_seccomp(d):  # type: ignore[no-untyped-def]
    evictor(d).pod["securityContext"].pop("seccompProfile")
    evictor(d).container["securityContext"].pop("seccompProfile")


def _engine_other_fsgroup(d):  # type: ignore[no-untyped-def]
    engine(d).pod["securityContext"]["fsGroup"] = 3000


def _evictor_other_uid(d):  # type: ignore[no-untyped-def]
    evictor(d).container["securityContext"]["runAsUser"] = 1001


def _mount_without_volume(d):  # type: ignore[no-untyped-def]
    evictor(d).container["volumeMounts"].append({"name": "cache", "mountPath": "/cache"})


def _two_replicas_on_sqlite(d):  # type: ignore[no-untyped-def]
    evictor(d).obj["spec"]["replicas"] = 2


def _rolling_update_on_sqlite(d):  # type: ignore[no-untyped-def]
    evictor(d).obj["spec"]["strategy"] = {"type": "RollingUpdate"}


def _stock_offloading_connector(d):  # type: ignore[no-untyped-def]
    w = engine(d)
    args = w.container["args"]
    i = args.index(mc.KV_TRANSFER_FLAG) + 1
    cfg = json.loads(args[i])
    cfg["kv_connector"] = "OffloadingConnector"
    del cfg["kv_connector_module_path"]
    args[i] = json.dumps(cfg)


def _typo_in_transfer_config(d):  # type: ignore[no-untyped-def]
    w = engine(d)
    args = w.container["args"]
    i = args.index(mc.KV_TRANSFER_FLAG) + 1
    cfg = json.loads(args[i])
    cfg["kv_load_failure_polcy"] = cfg.pop("kv_load_failure_policy")
    args[i] = json.dumps(cfg)


def _typo_in_connector_setting(d):  # type: ignore[no-untyped-def]
    set_extra(engine(d), kvfs_io_thread=8)


def _hash_seed_unpinned(d):  # type: ignore[no-untyped-def]
    w = engine(d)
    w.container["env"] = [e for e in w.container["env"] if e["name"] != "PYTHONHASHSEED"]


def _transfer_config_not_json(d):  # type: ignore[no-untyped-def]
    args = engine(d).container["args"]
    i = args.index(mc.KV_TRANSFER_FLAG) + 1
    args[i] = args[i].replace('"kv_role"', "kv_role")


def _no_multiproc_dir(d):  # type: ignore[no-untyped-def]
    w = engine(d)
    w.container["env"] = [e for e in w.container["env"] if e["name"] != "PROMETHEUS_MULTIPROC_DIR"]


def _multiproc_dir_on_root_fs(d):  # type: ignore[no-untyped-def]
    w = engine(d)
    next(e for e in w.container["env"] if e["name"] == "PROMETHEUS_MULTIPROC_DIR")["value"] = "/var/run/prom"


def _engine_without_wrapper(d):  # type: ignore[no-untyped-def]
    engine(d).container["command"] = ["vllm", "serve"]


def _namespace_baseline(d):  # type: ignore[no-untyped-def]
    mc.find(d, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"


def _engine_host_network(d):  # type: ignore[no-untyped-def]
    engine(d).pod["hostNetwork"] = True


def _engine_adds_sys_admin(d):  # type: ignore[no-untyped-def]
    engine(d).container["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]


def _hostpath_models(d):  # type: ignore[no-untyped-def]
    vol = next(v for v in engine(d).pod["volumes"] if v["name"] == "models")
    vol.pop("emptyDir")
    vol["hostPath"] = {"path": "/models"}


def _evictor_unknown_flag(d):  # type: ignore[no-untyped-def]
    evictor(d).container["args"] += ["--high-watermak", "90"]


def _evictor_flag_overrides_port(d):  # type: ignore[no-untyped-def]
    evictor(d).container["args"] += ["--metrics-port", "9500"]


BREAKAGES = {
    "evictor flag misspelt": (_evictor_unknown_flag, mc.check_evictor_config_keys, "No such option"),
    "evictor flag moves the port": (_evictor_flag_overrides_port, mc.check_ports, "9500"),
    "namespace not restricted": (_namespace_baseline, mc.check_pod_security_restricted, "'baseline'"),
    "engine on host network": (_engine_host_network, mc.check_pod_security_restricted, "hostNetwork"),
    "engine adds SYS_ADMIN": (_engine_adds_sys_admin, mc.check_pod_security_restricted, "capabilities"),
    "hostPath volume": (_hostpath_models, mc.check_pod_security_restricted, "hostPath"),
    "no PROMETHEUS_MULTIPROC_DIR": (
        _no_multiproc_dir,
        mc.check_engine_metrics,
        "no PROMETHEUS_MULTIPROC_DIR",
    ),
    "metrics dir on root fs": (
        _multiproc_dir_on_root_fs,
        mc.check_engine_metrics,
        "not on a writable volume",
    ),
    "engine without entrypoint wrapper": (_engine_without_wrapper, mc.check_engine_metrics, "is not"),
    "stock OffloadingConnector": (_stock_offloading_connector, mc.check_connector_config, "kv_connector="),
    "typo in kv-transfer-config": (
        _typo_in_transfer_config,
        mc.check_connector_config,
        "kv_load_failure_polcy",
    ),
    "typo in a connector setting": (_typo_in_connector_setting, mc.check_connector_config, "would refuse"),
    "PYTHONHASHSEED unpinned": (_hash_seed_unpinned, mc.check_connector_config, "PYTHONHASHSEED"),
    "kv-transfer-config not JSON": (_transfer_config_not_json, mc.check_connector_config, "not JSON"),
    "evictor mounts the claim elsewhere": (
        _evictor_mounts_other_path,
        mc.check_shared_claim,
        "not on a Persistent",
    ),
    "evictor mounts another claim": (_evictor_mounts_other_claim, mc.check_shared_claim, "disagree"),
    "shared claim is RWO": (_shared_claim_rwo, mc.check_shared_claim, "not ReadWriteMany"),
    "connector root elsewhere": (_connector_root_elsewhere, mc.check_roots, "!= connector root"),
    "evictor root elsewhere": (_evictor_root_elsewhere, mc.check_roots, "!= connector root"),
    "typo in config": (_typo_in_config, mc.check_evictor_config_keys, "'hihg_watermark' is not"),
    "typo in env": (_typo_in_env, mc.check_evictor_config_keys, "KVFS_HIGH_WATERMRK"),
    "config refused": (_config_the_evictor_refuses, mc.check_evictor_config_keys, "would refuse"),
    "metrics port moved": (_metrics_port_moved, mc.check_ports, "9500"),
    "readiness on /healthz": (_readiness_on_healthz, mc.check_ports, "!= /readyz"),
    "servicemonitor port": (_servicemonitor_wrong_port, mc.check_ports, "endpoint port 'http'"),
    "engine port moved": (_engine_port_moved, mc.check_ports, "8080"),
    "catalog on shared mount": (_catalog_on_shared_mount, mc.check_catalog_location, "shared claim"),
    "catalog on root fs": (_catalog_on_root_filesystem, mc.check_catalog_location, "root filesystem"),
    "catalog on emptyDir": (_catalog_on_emptydir, mc.check_catalog_location, "non-persistent"),
    "db password in ConfigMap": (_database_password_in_configmap, mc.check_catalog_location, "Secret"),
    "writable root fs": (_writable_root_fs, mc.check_security, "readOnlyRootFilesystem"),
    "privilege escalation": (_privilege_escalation, mc.check_security, "allowPrivilegeEscalation"),
    "capabilities kept": (_capabilities_kept, mc.check_security, "drop ALL"),
    "engine as root": (_engine_as_root, mc.check_security, "runAsUser"),
    "no seccomp": (_no_seccomp, mc.check_security, "seccompProfile"),
    "engine fsGroup differs": (_engine_other_fsgroup, mc.check_identity, "differ"),
    "evictor uid differs": (_evictor_other_uid, mc.check_identity, "differ"),
    "mount without volume": (_mount_without_volume, mc.check_references, "names no volume"),
    "2 replicas on SQLite": (_two_replicas_on_sqlite, mc.check_evictor_singleton, "replicas"),
    "RollingUpdate on SQLite": (_rolling_update_on_sqlite, mc.check_evictor_singleton, "Recreate"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_invariant_catches_its_breakage(breakage: str) -> None:
    mutate, check, expected = BREAKAGES[breakage]
    docs = docs_of("base")
    mutate(docs)
    problems = check(docs)
    assert any(expected in p for p in problems), problems


# --- overlay-specific promises -----------------------------------------------------------------------------


def test_postgres_overlay_runs_two_evictors_on_a_catalog_from_a_secret() -> None:
    docs = docs_of("postgres")
    w = evictor(docs)
    assert w.obj["spec"]["replicas"] == 2
    assert w.obj["spec"]["strategy"]["type"] == "RollingUpdate"
    assert mc.secret_env(w.container)["KVFS_CATALOG"] == {"name": "kvfs-catalog", "key": "url"}
    assert "catalog" not in mc.evictor_config_keys(docs, w), "the URL must only come from the Secret"
    assert mc.evictor_settings(docs, w).catalog.startswith("postgresql")
    assert not mc.find(docs, "PersistentVolumeClaim", "kvfs-evictor-catalog"), "SQLite volume left behind"
    assert mc.find(docs, "PodDisruptionBudget", "kvfs-evictor")[0]["spec"]["minAvailable"] == 1
    anti = w.pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_postgres_overlay_is_caught_without_its_secret() -> None:
    docs = docs_of("postgres")
    evictor(docs).container["env"] = []  # the catalog would fall back to SQLite under $HOME
    assert mc.check_catalog_location(docs) or mc.check_evictor_singleton(docs)


def test_base_settings_are_the_documented_ones() -> None:
    docs = docs_of("base")
    s = mc.evictor_settings(docs, evictor(docs))
    assert (s.high_watermark, s.low_watermark) == (85.0, 70.0)
    assert s.watch == "off"
    assert s.catalog == "sqlite:////var/lib/kvfs/catalog.db"


def test_gc_cronjob_runs_kvfs_gc_with_real_flags() -> None:
    docs = docs_of("gc-cronjob")
    assert not mc.evictors(docs)
    jobs = mc.cli_jobs(docs)
    assert len(jobs) == 2  # kvfs-gc (journals only) and kvfs-gc-scan (daily walk)
    for job in jobs:
        assert job.obj["spec"]["concurrencyPolicy"] == "Forbid"
        group, gc = mc.cli_invocation(job)
        assert gc.command.name == "gc"
        assert group.params["root"].as_posix() == "/mnt/files-storage"
        assert gc.params["max_bytes"] > 0 and gc.params["ttl"] > 0 and gc.params["as_json"] is True
        assert gc.params["dry_run"] is False and gc.params["remove_journals"] is True
        # max-bytes leaves headroom under the shared claim (eviction lags by a schedule period).
        claim = mc.find(docs, "PersistentVolumeClaim", "kvfs-shared")[0]
        from kvfs.units import parse_size

        size = parse_size(claim["spec"]["resources"]["requests"]["storage"].replace("Ti", "TiB"))
        assert gc.params["max_bytes"] <= 0.8 * size


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["gc", "--max-byte=7TiB"], "No such option"),
        (["gc", "--ttl=seven days"], "ttl"),
        (["gcc"], "No such command"),
    ],
)
def test_gc_cronjob_flag_check_rejects_bad_commands(args: list[str], error: str) -> None:
    import click

    docs = docs_of("gc-cronjob")
    job = mc.cli_jobs(docs)[0]
    job.container["args"] = ["--root=/mnt/files-storage", *args]
    with pytest.raises(click.ClickException) as info:
        mc.cli_invocation(job)
    assert error.lower() in info.value.format_message().lower()


def test_catalog_volume_holds_ten_million_blocks() -> None:
    # The SQLite catalog's footprint, measured on a small catalog (fixed overheads make this an overestimate).
    from catalog_footprint import bytes_per_block

    from kvfs.units import parse_size

    (pvc,) = mc.find(docs_of("base"), "PersistentVolumeClaim", "kvfs-evictor-catalog")
    size = parse_size(pvc["spec"]["resources"]["requests"]["storage"].replace("Gi", "GiB"))
    assert size / bytes_per_block(20_000) >= 10_000_000


def lifecycle_sleeps(docs: Any) -> list[str]:
    """Containers whose lifecycle hooks use the `sleep` handler (beta and on by default only since 1.30)."""
    return [
        f"{w.name}: {hook}"
        for w in mc.iter_workloads(docs)
        for hook, handler in (w.container.get("lifecycle") or {}).items()
        if "sleep" in handler
    ]


@pytest.mark.parametrize("tree", sorted(kustomization_dirs()))
def test_lifecycle_hooks_work_on_the_oldest_supported_kubernetes(tree: str) -> None:
    if tuple(int(x) for x in OLDEST_K8S.split(".")) >= (1, 30):
        pytest.skip(f"the sleep handler is fine from Kubernetes 1.30 (oldest supported: {OLDEST_K8S})")
    assert lifecycle_sleeps(rendered(tree)) == []


def test_lifecycle_sleep_check_catches_a_sleep_handler() -> None:
    docs = copy.deepcopy(list(rendered("base")))
    (engine,) = mc.engines(docs)
    engine.container["lifecycle"] = {"preStop": {"sleep": {"seconds": 10}}}
    assert lifecycle_sleeps(docs)
