"""The example overlay in docs/deploy.md renders, validates and keeps every invariant, with its patches applied."""

from __future__ import annotations

import re
from pathlib import Path

import manifest_checks as mc
from manifest_render import MANIFESTS, REPO, k8s_versions, render, validate_object

DOC = REPO / "docs" / "deploy.md"


def example_overlay() -> str:
    text = DOC.read_text()
    match = re.search(r"cat > kustomization\.yaml <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert match, "docs/deploy.md lost its example overlay"
    return match.group(1)


def test_the_documented_example_overlay_works(tmp_path: Path) -> None:
    # The example lives in deploy/prod/ next to manifests/ (it refers to ../../manifests/base).
    (tmp_path / "manifests").symlink_to(MANIFESTS)
    site = tmp_path / "deploy" / "prod"
    site.mkdir(parents=True)
    (site / "kustomization.yaml").write_text(example_overlay())
    docs = render(site)
    assert [str(p) for obj in docs for v in k8s_versions() for p in validate_object(obj, v)] == []
    assert mc.all_problems(docs) == []
    (shared,) = mc.find(docs, "PersistentVolumeClaim", "kvfs-shared")
    assert shared["spec"]["storageClassName"] == "lustre-rwx"
    (engine,) = mc.engines(docs)
    assert engine.obj["spec"]["replicas"] == 8
    assert engine.container["image"] == "registry.example.com/ml/kvfs-engine:0.1.0"
    (evictor,) = mc.evictors(docs)
    assert evictor.container["image"] == "registry.example.com/ml/kvfs-evictor:0.1.0"
