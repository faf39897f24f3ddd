"""The Dockerfiles parse, pin their bases and dependencies, copy what exists, and agree with the manifests.

Images are not built here (no registry is reachable in CI); these checks catch the mistakes that would only
show at build or run time: an unpinned base, a dependency missing from the image, a vLLM image that does not
match the vLLM the connector is tested with, a uid that differs from the manifests'.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import dockerfile
import manifest_checks as mc
import pytest
from manifest_render import REPO, rendered
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKER = REPO / "docker"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    flags: tuple[str, ...]
    words: tuple[str, ...]
    json: bool


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions as BuildKit reads them (the `dockerfile` package wraps Docker's own Go parser)."""
    return [
        Instruction(c.start_line, c.cmd.upper(), tuple(c.flags), tuple(c.value), c.json)
        for c in dockerfile.parse_file(str(path))
    ]


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def requirement_pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: {line} is not pinned with =="
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def pyproject_requirements(*extras: str) -> dict[str, Requirement]:
    """pyproject's [project] dependencies, plus those of the named extras."""
    lines = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        lines += PYPROJECT["project"]["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in lines}


def runtime_closure(*extras: str) -> set[str]:
    """Names of pyproject's dependencies (+ extras') and everything they need on this platform (installed
    metadata)."""
    seen: set[str] = set()
    todo = list(pyproject_requirements(*extras).values())
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for sub in requires(name) or []:
            s = Requirement(sub)
            extras = req.extras or {""}
            if s.marker is None or any(s.marker.evaluate({"extra": e}) for e in extras):
                todo.append(s)
    return seen


def test_there_are_two_images() -> None:
    assert {p.name for p in dockerfiles()} == {"engine.Dockerfile", "evictor.Dockerfile"}


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_parses_and_pins_its_bases(path: Path) -> None:
    instructions = parse_dockerfile(path)
    assert instructions[0].op == "FROM"
    assert {i.op for i in instructions} <= KNOWN_INSTRUCTIONS
    stages: set[str] = set()
    for i in instructions:
        if i.op != "FROM":
            continue
        words = list(i.words)
        image = words[0]
        if image in stages:
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and "$" not in image, (
            f"{path.name}:{i.line}: unpinned {image}"
        )
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_copied_sources_exist_and_are_not_dockerignored(path: Path) -> None:
    ignore = [ln.strip() for ln in Path(f"{path}.dockerignore").read_text().splitlines()]
    patterns = [ln for ln in ignore if ln and not ln.startswith("#")]
    for i in parse_dockerfile(path):
        if i.op != "COPY" or any(f.startswith("--from=") for f in i.flags):
            continue
        sources = list(i.words[:-1])
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}:{i.line}: COPY {src}: no such path"
            # Docker's rule: the last matching pattern wins; "!" re-includes.
            included = True
            for pat in patterns:
                neg = pat.startswith("!")
                pat = pat.lstrip("!")
                if fnmatch.fnmatch(src, pat) or fnmatch.fnmatch(src, pat.removesuffix("/**")):
                    included = neg
            assert included, f"{path.name}:{i.line}: COPY {src} is excluded by {path.name}.dockerignore"


def test_evictor_requirements_are_the_exact_runtime_closure() -> None:
    pins = requirement_pins(DOCKER / "requirements-evictor.txt")
    assert set(pins) == runtime_closure("evictor")
    for name, req in pyproject_requirements("evictor").items():
        assert pins[name] in req.specifier, f"{name}=={pins[name]} violates pyproject's {req}"


def test_engine_requirements_hold_no_evictor_dependency() -> None:
    # The engine image gets kvfs' core dependencies only: the evictor extra (watchers, scheduler, psycopg)
    # has no business in every vLLM pod.
    engine = requirement_pins(DOCKER / "requirements-engine.txt")
    assert set(engine) <= runtime_closure()
    assert {"psycopg", "psycopg-binary", "watchdog"} <= runtime_closure("evictor") - runtime_closure()
    evictor = requirement_pins(DOCKER / "requirements-evictor.txt")
    assert {n: evictor[n] for n in engine} == engine, "both images must use the same pins"


def test_make_setup_installs_every_extra() -> None:
    # `make setup` is the developer's environment: the engine, the evictor and the tests, all of it.
    (line,) = [
        ln
        for ln in (REPO / "Makefile").read_text().splitlines()
        if "pip install" in ln and "-e '." in ln and "VENV033" not in ln
    ]
    installed = set(re.search(r"-e '\.\[([a-z0-9,]+)\]'", line).group(1).split(","))
    assert installed == set(PYPROJECT["project"]["optional-dependencies"])


ENGINE_IMPORTS = """
import json, sys
import kvfs.blockfile, kvfs.journal, kvfs.layout, kvfs.metrics, connector.plugin, connector.iopool, connector.naming
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_engine_side_modules_import_nothing_from_the_evictor_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ENGINE_IMPORTS],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"psycopg", "watchdog", "evictor"}


@pytest.mark.vllm
def test_engine_requirements_add_exactly_what_vllm_lacks() -> None:
    try:
        vllm_reqs = [Requirement(r) for r in requires("vllm") or []]
    except PackageNotFoundError:
        pytest.skip("vLLM is not installed (the vllm extra)")
    vllm_needs = {
        canonicalize_name(r.name) for r in vllm_reqs if r.marker is None or r.marker.evaluate({"extra": ""})
    }
    engine = requirement_pins(DOCKER / "requirements-engine.txt")
    evictor = requirement_pins(DOCKER / "requirements-evictor.txt")
    # Everything kvfs needs is either already a vLLM requirement or added by the engine image...
    assert runtime_closure() - vllm_needs <= set(engine)
    # ...and the engine image never re-pins a package vLLM itself requires (that could break vLLM).
    assert not set(engine) & vllm_needs
    assert {n: evictor[n] for n in engine} == engine, "both images must use the same pins"


def test_engine_image_is_the_vllm_release_the_connector_is_tested_with() -> None:
    (pin,) = [
        Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["vllm"] if r.startswith("vllm")
    ]
    (version,) = [s.version for s in pin.specifier if s.operator == "=="]
    bases = [i.words[0] for i in parse_dockerfile(DOCKER / "engine.Dockerfile") if i.op == "FROM"]
    assert bases == [f"vllm/vllm-openai:v{version}"]


def test_evictor_image_python_is_supported_by_the_project() -> None:
    from packaging.specifiers import SpecifierSet

    supported = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for i in parse_dockerfile(DOCKER / "evictor.Dockerfile"):
        if i.op == "FROM" and i.words[0].startswith("python:"):
            version = re.match(r"python:(\d+\.\d+\.\d+)-", i.words[0])
            assert version and Version(version.group(1)) in supported, i.words


def test_images_run_as_the_manifests_identity_and_serve_the_evictor_port() -> None:
    from evictor.settings import SETTINGS_SCHEMA

    docs = list(rendered("base"))
    (ev,) = mc.evictors(docs)
    psc = ev.pod["securityContext"]
    instructions = parse_dockerfile(DOCKER / "evictor.Dockerfile")
    assert [i.words for i in instructions if i.op == "USER"] == [(f"{psc['runAsUser']}:{psc['runAsGroup']}",)]
    assert [i.words for i in instructions if i.op == "EXPOSE"] == [(SETTINGS_SCHEMA["metrics_port"].default,)]
    (ep,) = [i for i in instructions if i.op == "ENTRYPOINT"]
    assert ep.json and ep.words == ("kvfs-evictor",) and "kvfs-evictor" in PYPROJECT["project"]["scripts"]
    assert "kvfs" in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("tree", ["base", "postgres", "gc-cronjob"])
def test_manifest_image_tags_are_the_project_version(tree: str) -> None:
    version = PYPROJECT["project"]["version"]
    for w in mc.iter_workloads(rendered(tree)):
        image = w.container["image"]
        if image.startswith("kvfs/"):
            assert image.endswith(f":{version}"), f"{w.name}: {image} (project version {version})"


def test_dockerfile_parser_joins_continuations_and_keeps_flags(tmp_path: Path) -> None:
    good = tmp_path / "good.Dockerfile"
    good.write_text(
        "FROM a:1 AS b\n# c\nRUN x \\\n  # inner comment\n  && y\nCOPY --chmod=0755 s /d\nUSER 1:2\n"
    )
    got = [(i.line, i.op, i.flags, i.words) for i in parse_dockerfile(good)]
    assert got[0] == (1, "FROM", (), ("a:1", "AS", "b"))
    assert got[1][1] == "RUN" and got[1][3][0].split() == ["x", "&&", "y"]
    assert got[2:] == [(6, "COPY", ("--chmod=0755",), ("s", "/d")), (7, "USER", (), ("1:2",))]


def test_requirement_pins_refuse_ranges(tmp_path: Path) -> None:
    loose = tmp_path / "r.txt"
    loose.write_text("click==8.5.1  # ok\nsqlalchemy>=2.0\n")
    with pytest.raises(AssertionError, match="not pinned"):
        requirement_pins(loose)


def test_engine_image_entrypoint_is_the_manifests_command() -> None:
    docs = list(rendered("base"))
    (engine,) = mc.engines(docs)
    entry = [i.words for i in parse_dockerfile(DOCKER / "engine.Dockerfile") if i.op == "ENTRYPOINT"]
    assert entry == [tuple(mc.ENGINE_COMMAND)]
    assert mc.argv(engine.container)[:3] == mc.ENGINE_COMMAND
    copies = [i.words for i in parse_dockerfile(DOCKER / "engine.Dockerfile") if i.op == "COPY"]
    assert any(c[-1] == f"/usr/local/bin/{mc.ENGINE_COMMAND[0]}" for c in copies)


IMPORT_EVERYTHING_THE_EVICTOR_IMAGE_RUNS = """
import json, sys
before = set(sys.modules)
import click
import evictor.__main__, evictor.service, evictor.cli
from kvfs.cli import main
ctx = click.Context(main)
commands = {name: main.get_command(ctx, name) is not None for name in main.list_commands(ctx)}
from importlib.metadata import packages_distributions
dists = packages_distributions()
# Only modules loaded from files: Cython's "cython_runtime" and other in-memory modules belong to no package.
new = {m.split(".")[0] for m in set(sys.modules) - before if getattr(sys.modules[m], "__file__", None)}
third_party = {m: dists.get(m, ["?"]) for m in new if m not in sys.stdlib_module_names and not m.startswith("_")}
print(json.dumps({"commands": commands, "modules": third_party}))
"""


def modules_outside_the_evictor_image(extra_import: str = "") -> tuple[dict[str, bool], dict[str, list[str]]]:
    """(kvfs commands found, third-party modules imported that the slim image's requirements do not provide)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING_THE_EVICTOR_IMAGE_RUNS.replace("import click\n", f"import click\n{extra_import}\n", 1)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    allowed = set(requirement_pins(DOCKER / "requirements-evictor.txt")) | {"kvfs"}
    foreign = {
        module: dists
        for module, dists in report["modules"].items()
        if not any(canonicalize_name(d) in allowed for d in dists)
    }
    return report["commands"], foreign


def test_evictor_image_runs_on_its_pinned_requirements_alone() -> None:
    # The slim image has exactly requirements-evictor.txt + kvfs: the evictor and every `kvfs` command must
    # import nothing else (no vLLM, no torch, nothing undeclared).
    commands, foreign = modules_outside_the_evictor_image()
    assert commands and all(commands.values()), commands
    assert foreign == {}, "modules the evictor image would not have"


def test_evictor_image_check_catches_an_undeclared_import() -> None:
    _, foreign = modules_outside_the_evictor_image("import pytest")
    assert "pytest" in foreign
