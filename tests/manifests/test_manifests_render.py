"""Every kustomize tree under manifests/ renders with a real kustomize and validates against the k8s schemas."""

from __future__ import annotations

import copy
import subprocess

import pytest
from manifest_render import (
    MANIFESTS,
    OLDEST_K8S,
    KustomizeMissing,
    k8s_versions,
    kustomization_dirs,
    kustomize_command,
    render,
    rendered,
    validate_object,
)

TREES = sorted(kustomization_dirs())
CLUSTER_SCOPED = {"Namespace", "PriorityClass"}


def test_the_documented_trees_exist() -> None:
    assert {"base", "postgres", "gc-cronjob"} <= set(TREES)


def test_kustomize_is_a_real_implementation() -> None:
    cmd = kustomize_command()
    # `kubectl kustomize` / `kustomize build` of a directory that is not a kustomization must fail loudly.
    proc = subprocess.run([*cmd, str(MANIFESTS / "grafana" / "no-such-dir")], capture_output=True, text=True)
    assert proc.returncode != 0
    with pytest.raises(RuntimeError, match="kustomize failed"):
        render(MANIFESTS / "grafana" / "no-such-dir")


@pytest.mark.parametrize("tree", TREES)
def test_tree_renders_with_unique_names(tree: str) -> None:
    docs = rendered(tree)
    assert docs, f"{tree} rendered nothing"
    keys = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs]
    assert len(keys) == len(set(keys)), f"duplicate objects in {tree}"
    namespaced = [d for d in docs if d["kind"] not in CLUSTER_SCOPED]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"kvfs"}


@pytest.mark.parametrize("version", k8s_versions())
@pytest.mark.parametrize("tree", TREES)
def test_every_object_validates_against_the_kubernetes_schemas(tree: str, version: str) -> None:
    problems = [str(p) for obj in rendered(tree) for p in validate_object(obj, version)]
    assert problems == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["spec"].__setitem__("replica", 2), "'replica' was unexpected"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__(
                "containerPort", "x"
            ),
            "not of type 'integer'",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
            "'name' is a required property",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].__setitem__(
                "pathh", "/x"
            ),
            "'pathh' was unexpected",
        ),
    ],
)
def test_validation_catches_broken_deployments(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    deployment = copy.deepcopy(next(d for d in rendered("base") if d["kind"] == "Deployment"))
    mutate(deployment)
    problems = validate_object(deployment, OLDEST_K8S)
    assert problems and expected in str(problems[0])


def test_validation_catches_broken_servicemonitors_and_unknown_kinds() -> None:
    monitor = copy.deepcopy(next(d for d in rendered("base") if d["kind"] == "ServiceMonitor"))
    assert validate_object(monitor, OLDEST_K8S) == []
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert "'intervall' was unexpected" in str(validate_object(monitor, OLDEST_K8S))
    monitor = copy.deepcopy(next(d for d in rendered("base") if d["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    assert validate_object(monitor, OLDEST_K8S)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in str(validate_object(unknown, OLDEST_K8S))


@pytest.mark.parametrize("tree", TREES)
def test_images_are_pinned(tree: str) -> None:
    for obj in rendered(tree):
        spec = obj.get("spec") or {}
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = (spec.get("template") or {}).get("spec")
        for c in (pod or {}).get("containers", []):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"{obj['metadata']['name']}: {image}"


def test_an_old_kustomize_is_refused_with_a_clear_message(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Debian's kubernetes-client: kubectl 1.20 embedding kustomize 2, which cannot render these trees.
    fake = tmp_path / "kubectl"
    fake.write_text('#!/bin/sh\necho \'{"clientVersion": {}, "kustomizeVersion": "v2.0.3"}\'\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    kustomize_command.cache_clear()
    try:
        with pytest.raises(KustomizeMissing, match=r"kustomize >= 5.*v2\.0\.3"):
            kustomize_command()
    finally:
        kustomize_command.cache_clear()
