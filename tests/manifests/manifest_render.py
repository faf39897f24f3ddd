"""Render the kustomize trees under manifests/ and validate every object against the Kubernetes schemas offline.

Rendering uses a real kustomize: a standalone `kustomize` binary when one is on PATH, else the one built into
`kubectl` (`kubectl kustomize`). Validation uses the JSON schemas bundled in the `kubernetes-validate` wheel (the
`test` extra), strict mode (unknown fields fail); CRDs kvfs uses (the Prometheus operator's ServiceMonitor) are
checked against the hand-written schemas in `schemas/` beside this file. Nothing is fetched at test time.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The oldest Kubernetes minor the manifests promise to work on, and the newest schemas the validator ships.
OLDEST_K8S = "1.29"

Obj = dict[str, Any]


class KustomizeMissing(RuntimeError):
    pass


# `labels:` and the patch forms the trees use need kustomize 5 (kubectl 1.27+ embeds it; Debian's own
# kubernetes-client 1.20 embeds kustomize 2, which cannot render them).
MIN_KUSTOMIZE = (5, 0)


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else ()


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """The argv prefix that renders a kustomization directory given as the next argument."""
    found: list[str] = []
    if exe := shutil.which("kustomize"):
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60).stdout
        if _version_tuple(out) >= MIN_KUSTOMIZE:
            return (exe, "build")
        found.append(f"{exe} ({out.strip() or 'unknown version'})")
    if exe := shutil.which("kubectl"):
        proc = subprocess.run(
            [exe, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
        )
        try:
            version = json.loads(proc.stdout).get("kustomizeVersion", "")
        except json.JSONDecodeError:
            version = ""
        if _version_tuple(version) >= MIN_KUSTOMIZE:
            return (exe, "kustomize")
        found.append(f"{exe} (kustomize {version or 'unknown'})")
    raise KustomizeMissing(
        "no kustomize >= 5 found"
        + (f" (found {', '.join(found)})" if found else "")
        + ": install `kustomize` 5.x "
        "or `kubectl` 1.27+ (which embeds it) -- see docs/deploy.md"
    )


def kustomization_dirs() -> dict[str, Path]:
    """Every renderable tree: the base and each overlay, by short name."""
    dirs = {"base": MANIFESTS / "base"}
    for kfile in sorted((MANIFESTS / "overlays").glob("*/kustomization.yaml")):
        dirs[kfile.parent.name] = kfile.parent
    return dirs


def render(directory: Path) -> list[Obj]:
    proc = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize failed on {directory}: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@functools.cache
def rendered(name: str) -> tuple[Obj, ...]:
    """Cached rendering of one tree (kustomize is the slow part of these tests)."""
    return tuple(render(kustomization_dirs()[name]))


@dataclass(frozen=True)
class Problem:
    obj: str
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.message}"


def ident(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name')}"


@functools.cache
def _crd_validator(kind: str, api_version: str) -> jsonschema.Validator | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_object(obj: Obj, k8s_version: str) -> list[Problem]:
    """Schema problems of one object (empty when valid). A kind with no schema at all is a problem too."""
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
        return []
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [Problem(ident(obj), f"k8s {k8s_version} schema: {where}: {exc.message}")]
    except kubernetes_validate.SchemaNotFoundError:
        pass
    validator = _crd_validator(str(obj.get("kind")), str(obj.get("apiVersion")))
    if validator is None:
        return [Problem(ident(obj), f"no schema for {obj.get('apiVersion')} {obj.get('kind')}")]
    return [
        Problem(ident(obj), f"{'.'.join(str(p) for p in err.path)}: {err.message}")
        for err in validator.iter_errors(obj)
    ]


def k8s_versions() -> tuple[str, ...]:
    """Validate against the oldest supported minor and the newest one the validator knows."""
    return (OLDEST_K8S, kubernetes_validate.latest_version())
