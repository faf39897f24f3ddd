"""The operator review of manifests/ (issue 14): each point it found holds fixed in every rendered tree."""

from __future__ import annotations

import re

import manifest_checks as mc
import pytest
from manifest_render import REPO, kustomization_dirs, rendered

TREES = sorted(kustomization_dirs())
GC_JOBS = {"kvfs-gc", "kvfs-gc-scan"}


def duration_s(text: str) -> float:
    return float(text)


def engine_workloads(tree: str) -> list[mc.Workload]:
    found = mc.engines(list(rendered(tree)))
    assert found, tree
    return found


def test_gc_cronjobs_remove_applied_journals_and_only_the_daily_one_walks_the_tree() -> None:
    jobs = {w.obj["metadata"]["name"]: w for w in mc.cli_jobs(list(rendered("gc-cronjob")))}
    assert set(jobs) == GC_JOBS
    for w in jobs.values():
        assert "--remove-journals" in w.container["args"], w.name  # segments would grow without bound
    frequent, daily = jobs["kvfs-gc"], jobs["kvfs-gc-scan"]
    assert "--no-scan" in frequent.container["args"]
    assert mc.flag_value(frequent.container["args"], "--orphans-older-than") is None  # would force a walk
    assert "--scan" in daily.container["args"]
    assert mc.flag_value(daily.container["args"], "--orphans-older-than") is not None
    assert daily.obj["spec"]["schedule"].split()[1] != "*"  # at most hourly


@pytest.mark.parametrize("tree", TREES)
def test_engines_drain_gracefully(tree: str) -> None:
    for w in engine_workloads(tree):
        args = w.container["args"]
        timeout = mc.flag_value(args, "--shutdown-timeout")
        assert timeout is not None and int(timeout) > 0, "vLLM's default 0 aborts in-flight requests"
        command = w.container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        sleep = int(command[1])
        assert sleep > 0
        # The kubelet's SIGKILL must come after the preStop pause and vLLM's drain.
        assert w.pod["terminationGracePeriodSeconds"] > sleep + int(timeout)


@pytest.mark.parametrize("tree", TREES)
def test_engines_have_a_disruption_budget(tree: str) -> None:
    docs = list(rendered(tree))
    for w in engine_workloads(tree):
        labels = mc.pod_labels(w.obj)
        budgets = [
            p
            for p in mc.find(docs, "PodDisruptionBudget")
            if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
        ]
        assert len(budgets) == 1, w.name
        spec = budgets[0]["spec"]
        assert spec.get("maxUnavailable") == 1 and spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("tree", TREES)
def test_engines_run_on_gpu_nodes_without_an_api_token(tree: str) -> None:
    docs = list(rendered(tree))
    for w in engine_workloads(tree):
        pod = w.pod
        assert pod["automountServiceAccountToken"] is False
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert pod["nodeSelector"] and pod["runtimeClassName"]
        (prio,) = mc.find(docs, "PriorityClass", pod["priorityClassName"])
        assert 0 < prio["value"] < 1_000_000_000 and not prio.get("globalDefault")


@pytest.mark.parametrize("tree", TREES)
def test_every_emptydir_is_bounded_except_memory_backed_ones_with_a_limit(tree: str) -> None:
    for w in mc.iter_workloads(list(rendered(tree))):
        for vol in w.pod.get("volumes") or []:
            if "emptyDir" in vol:
                assert (vol["emptyDir"] or {}).get("sizeLimit"), f"{w.name}: emptyDir {vol['name']} unbounded"


@pytest.mark.parametrize("tree", TREES)
def test_sqlite_catalog_claims_are_read_write_once_pod(tree: str) -> None:
    docs = list(rendered(tree))
    for claim in mc.find(docs, "PersistentVolumeClaim", "kvfs-evictor-catalog"):
        assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]


def test_postgres_evictor_budget_does_not_block_drains_during_a_database_outage() -> None:
    (pdb,) = [
        p
        for p in mc.find(list(rendered("postgres")), "PodDisruptionBudget")
        if p["metadata"]["name"] == "kvfs-evictor"
    ]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_deploy_doc_sizes_for_node_loss_failover() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    assert re.search(r"11 minutes[^.]*node loss|node loss[^.]*11 minutes", text), (
        "sizing must assume an 11-minute failover"
    )
    assert "@sha256:" in text  # how to pin images by digest


def _dockerfile(name: str) -> str:
    return (REPO / "docker" / name).read_text()


def test_images_have_a_passwd_entry_for_their_uid() -> None:
    for name in ("evictor.Dockerfile", "engine.Dockerfile"):
        text = _dockerfile(name)
        assert re.search(r"useradd[^\n]*--uid 1000", text), name


def test_engine_image_build_check_imports_the_connector_modules() -> None:
    text = _dockerfile("engine.Dockerfile")
    (check,) = re.findall(r'python3 -c "import ([^"]+)"', text)
    modules = [m.strip() for m in check.split(",")]
    for module in ("connector.connector", "connector.spec", "connector.tier", "kvfs.blockfile"):
        assert module in modules
    for module in modules:  # real modules, not the packages' (empty) __init__
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file() and path.stat().st_size > 200, module
