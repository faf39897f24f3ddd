"""manifests/helm/kvfs-evictor (the evictor alone) and manifests/components/kvfs-engine (kvfs for an existing vLLM
Deployment): rendered by the real helm and kustomize, validated offline against the Kubernetes schemas, and
checked together against the project's invariants, as an operator who owns the engines would deploy them.

helm comes from $KVFS_HELM, .tools/helm (`make test` fetches it: tests/manifests/get_helm.py) or PATH; without
one these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import manifest_checks as mc
import pytest
import yaml
from manifest_render import MANIFESTS, REPO, k8s_versions, kustomize_command, validate_object

CHART = MANIFESTS / "helm" / "kvfs-evictor"
COMPONENT = MANIFESTS / "components" / "kvfs-engine"
VARIANTS = {
    "sqlite": {"sharedClaim": "kvfs-shared"},
    "postgresql": {
        "sharedClaim": "kvfs-shared",
        "catalog": {"type": "postgresql"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "image": {"digest": "sha256:" + "0" * 64},
    },
}

# An operator's own vLLM Deployment, before kvfs: what llm-d or production-stack render, reduced.
EXISTING_ENGINE = textwrap.dedent(
    """
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: my-vllm
      labels: {app: my-vllm, kvfs.io/connector: enabled}
    spec:
      replicas: 2
      selector: {matchLabels: {app: my-vllm}}
      template:
        metadata: {labels: {app: my-vllm}}
        spec:
          securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 2000, fsGroup: 2000,
                            seccompProfile: {type: RuntimeDefault}}
          containers:
            - name: vllm
              image: registry.example.com/ml/kvfs-engine:0.1.0
              command: ["vllm", "serve"]
              args: ["Qwen/Qwen3-8B", "--port=8000"]
              env: [{name: HF_HOME, value: /models}]
              ports: [{name: http, containerPort: 8000}]
              securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: ["ALL"]}}
              volumeMounts: [{name: models, mountPath: /models}]
          volumes: [{name: models, emptyDir: {sizeLimit: 100Gi}}]
    """
)
SHARED_CLAIM = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "kvfs-shared"},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Ti"}}},
}


def real_helm() -> str:
    """A real helm binary: $KVFS_HELM, .tools/helm (`make test` fetches it, tests/manifests/get_helm.py), PATH."""
    for candidate in (os.environ.get("KVFS_HELM"), str(REPO / ".tools" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no helm binary (make test fetches one into .tools/helm; else set KVFS_HELM)")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    sets = [f"--set-json={k}={json.dumps(v)}" for k, v in (values or {}).items()]
    return subprocess.run([real_helm(), *args, *sets], capture_output=True, text=True, timeout=120)


def render_chart(values: dict[str, Any], release: str = "kvfs") -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "--namespace", "kvfs", values=values)
    if out.returncode != 0:
        raise ValueError(out.stderr.strip())
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def chart(variant: str) -> list[dict[str, Any]]:
    return render_chart(VARIANTS[variant])


def patched_engine(tmp_path: Path) -> list[dict[str, Any]]:
    (tmp_path / "engine.yaml").write_text(EXISTING_ENGINE)
    component = os.path.relpath(COMPONENT, tmp_path)  # kustomize refuses absolute component paths
    (tmp_path / "kustomization.yaml").write_text(f"resources: [engine.yaml]\ncomponents: [{component}]\n")
    proc = subprocess.run([*kustomize_command(), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", k8s_versions())
def test_chart_objects_validate_against_the_kubernetes_schemas(variant: str, version: str) -> None:
    docs = chart(variant)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ServiceAccount", "ConfigMap"}
    problems = [str(p) for d in docs for p in validate_object(d, version)]
    assert problems == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_with_a_patched_existing_engine_holds_every_invariant(variant: str, tmp_path: Path) -> None:
    docs = [*chart(variant), *patched_engine(tmp_path), SHARED_CLAIM]
    if variant == "sqlite":  # the check wants every Service scraped: the chart's ServiceMonitor is opt-in
        docs = render_chart(merge(VARIANTS[variant], {"serviceMonitor": {"enabled": True}}))
        docs += [*patched_engine(tmp_path), SHARED_CLAIM]
    problems = {c.__name__: c(docs) for c in mc.ALL_CHECKS}
    problems["check_ports"] = [p for p in problems["check_ports"] if "my-vllm" not in p]
    assert {k: v for k, v in problems.items() if v} == {}


def test_chart_modes(tmp_path: Path) -> None:
    sqlite, pg = chart("sqlite"), chart("postgresql")
    (dep,) = mc.find(sqlite, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (claim,) = mc.find(sqlite, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert not mc.find(sqlite, "PodDisruptionBudget") and not mc.find(sqlite, "ServiceMonitor")
    (w,) = mc.evictors(sqlite)
    settings = mc.evictor_settings(sqlite, w)  # the evictor's real settings loader
    assert (
        str(settings.root) == "/mnt/files-storage"
        and settings.catalog == "sqlite:////var/lib/kvfs/catalog.db"
    )
    (dep,) = mc.find(pg, "Deployment")
    assert dep["spec"]["replicas"] == 2 and not mc.find(pg, "PersistentVolumeClaim")
    (w,) = mc.evictors(pg)
    assert mc.secret_env(w.container)["KVFS_CATALOG"] == {"name": "kvfs-catalog", "key": "url"}
    assert w.container["image"] == "kvfs/evictor@sha256:" + "0" * 64
    (pdb,) = mc.find(pg, "PodDisruptionBudget")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (sm,) = mc.find(pg, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_chart_refuses_missing_or_wrong_values() -> None:
    with pytest.raises(ValueError, match="sharedClaim"):
        render_chart({})
    with pytest.raises(ValueError, match="catalog.type"):
        render_chart({"sharedClaim": "x", "catalog": {"type": "mysql"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resourcess": {"limits": {"cpu": "1"}}}, "resourcess"),
        ({"image": {"tagg": "1"}}, "tagg"),
        ({"settings": {"high_watermrak": 90}}, "high_watermrak"),
        ({"settings": {"root": "/other"}}, "root"),  # the chart's own key: once rendered it appeared twice
        ({"catalog": {"sqlite": {"sise": "1Gi"}}}, "sise"),
        ({"metricsPort": "9400"}, "metricsPort"),
    ],
)
def test_the_schema_rejects_misspelt_or_clashing_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_chart(merge({"sharedClaim": "x"}, values))


def test_settings_schema_is_the_evictors_settings() -> None:
    from evictor.settings import SETTINGS_SCHEMA

    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["settings"]["properties"])
    assert allowed == set(SETTINGS_SCHEMA) - {"root", "catalog", "metrics_port", "config"}


def test_config_file_has_each_key_once_and_the_evictor_accepts_it() -> None:
    docs = render_chart({"sharedClaim": "x", "mountPath": "/mnt/kv", "settings": {"ttl": "1d"}})
    (cm,) = mc.find(docs, "ConfigMap")
    text = cm["data"]["evictor.yaml"]
    keys = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith(" ")]
    assert len(keys) == len(set(keys)) and "root" in keys and "metrics_port" in keys
    (w,) = mc.evictors(docs)
    settings = mc.evictor_settings(docs, w)
    assert str(settings.root) == "/mnt/kv" and settings.ttl == 86400


@pytest.mark.parametrize(("replicas", "pdb"), [(1, False), (2, True), (3, True)])
def test_a_single_evictor_never_blocks_a_drain(replicas: int, pdb: bool) -> None:
    docs = render_chart({"sharedClaim": "x", "catalog": {"type": "postgresql"}, "replicas": replicas})
    pdbs = mc.find(docs, "PodDisruptionBudget")
    assert bool(pdbs) == pdb
    for p in pdbs:
        assert p["spec"] == {**p["spec"], "maxUnavailable": 1} and "minAvailable" not in p["spec"]
    assert not mc.find(render_chart({"sharedClaim": "x", "replicas": 3}), "PodDisruptionBudget")  # sqlite


@pytest.mark.parametrize(
    ("release", "override", "name"),
    [("kvfs", "", "kvfs-evictor"), ("kvfs-evictor", "", "kvfs-evictor"), ("prod", "", "prod-evictor"),
     ("prod", "evictor", "evictor")],
)  # fmt: skip
def test_object_names_and_the_alerts_job(release: str, override: str, name: str) -> None:
    values = {"sharedClaim": "x", "prometheusRule": {"enabled": True}, "fullnameOverride": override}
    docs = render_chart(values, release=release)
    assert {d["metadata"]["name"] for d in docs if d["kind"] != "PersistentVolumeClaim"} == {name}
    (rule,) = mc.find(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any(f'job="{name}"' in e for e in exprs) and not any(
        'job="kvfs-evictor"' in e for e in exprs if name != "kvfs-evictor"
    )


def test_optional_objects_equal_the_shipped_alerts_and_dashboard() -> None:
    assert (CHART / "files" / "rules.yaml").read_text() == (MANIFESTS / "alerts" / "rules.yaml").read_text()
    shipped = (MANIFESTS / "grafana" / "kvfs-dashboard.json").read_text()
    assert (CHART / "files" / "kvfs-dashboard.json").read_text() == shipped
    docs = render_chart(
        {
            "sharedClaim": "x",
            "prometheusRule": {"enabled": True, "labels": {"release": "p"}},
            "dashboard": {"enabled": True},
        }
    )
    (rule,) = mc.find(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((MANIFESTS / "alerts" / "rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "p"
    (dash,) = [d for d in mc.find(docs, "ConfigMap") if "kvfs-dashboard.json" in d["data"]]
    assert json.loads(dash["data"]["kvfs-dashboard.json"]) == json.loads(shipped)
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not mc.find(chart("sqlite"), "PrometheusRule")


def test_operator_extras_are_rendered() -> None:
    values = {
        "sharedClaim": "x",
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"a": "1"},
        "podLabels": {"team": "ml"},
        "priorityClassName": "infra",
        "extraEnv": [{"name": "PGSSLROOTCERT", "value": "/etc/pg/ca.crt"}],
        "extraVolumes": [{"name": "pg-ca", "secret": {"secretName": "pg-ca"}}],
        "extraVolumeMounts": [{"name": "pg-ca", "mountPath": "/etc/pg", "readOnly": True}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "securityContext": {"seLinuxOptions": {"level": "s0:c1,c2"}},
    }
    docs = render_chart(values)
    (dep,) = mc.find(docs, "Deployment")
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["a"] == "1" and pod["metadata"]["labels"]["team"] == "ml"
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["priorityClassName"] == "infra"
    assert spec["securityContext"]["seLinuxOptions"] == {"level": "s0:c1,c2"}
    assert spec["topologySpreadConstraints"][0]["maxSkew"] == 1
    (c,) = spec["containers"]
    assert mc.env_of(c)["PGSSLROOTCERT"] == "/etc/pg/ca.crt"
    assert {"name": "pg-ca", "mountPath": "/etc/pg", "readOnly": True} in c["volumeMounts"]
    assert {"name": "pg-ca", "secret": {"secretName": "pg-ca"}} in spec["volumes"]
    for version in k8s_versions():
        assert [str(p) for d in docs for p in validate_object(d, version)] == []
    (claim,) = mc.find(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_chart_ships_notes_readme_and_helmignore() -> None:
    for name in ("templates/NOTES.txt", "README.md", ".helmignore", "values.schema.json"):
        assert (CHART / name).is_file(), name
    # NOTES.txt is rendered by `helm lint` (test_helm_lint_strict); it tells the engines' root.
    assert "KVFS_CONNECTOR_ROOT={{ .Values.mountPath }}" in (CHART / "templates" / "NOTES.txt").read_text()


def test_component_patches_an_existing_engine(tmp_path: Path) -> None:
    (engine,) = mc.engines(patched_engine(tmp_path))
    assert mc.connector_root(engine) == "/mnt/files-storage"
    assert mc.env_of(engine.container)["PYTHONHASHSEED"] == "0"
    assert mc.claim_of(mc.mount_for(engine, "/mnt/files-storage")[1]) == "kvfs-shared"  # type: ignore[index]
    assert engine.container["args"][:2] == ["Qwen/Qwen3-8B", "--port=8000"]  # theirs, kept


def test_invariants_catch_a_chart_mounted_elsewhere_than_the_engines_root(tmp_path: Path) -> None:
    docs = render_chart(merge(VARIANTS["sqlite"], {"mountPath": "/mnt/kv"}))
    assert mc.check_roots([*docs, *patched_engine(tmp_path), SHARED_CLAIM])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(variant: str) -> None:
    lint = helm("lint", "--strict", str(CHART), values=VARIANTS[variant])
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_runbook_base_url_makes_every_runbook_link_point_at_it() -> None:
    rule_values = {"enabled": True, "runbookBaseUrl": "https://wiki.example.org/ops/kvfs-runbook/"}
    (rule,) = mc.find(render_chart({"sharedClaim": "x", "prometheusRule": rule_values}), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u == f"https://wiki.example.org/ops/kvfs-runbook#{u.split('#')[1]}" for u in urls)
    (default,) = mc.find(
        render_chart({"sharedClaim": "x", "prometheusRule": {"enabled": True}}), "PrometheusRule"
    )
    assert all(
        r["annotations"]["runbook_url"].startswith("https://kvfs.example/docs/runbook.md#")
        for g in default["spec"]["groups"]
        for r in g["rules"]
    )
    with pytest.raises(ValueError, match="runbookBaseUrl"):
        render_chart(
            {"sharedClaim": "x", "prometheusRule": {"enabled": True, "runbookBaseUrl": "docs/runbook.md"}}
        )
