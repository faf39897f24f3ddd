"""manifests/components/kvfs-engine on the engine shapes fleets run, rendered by real kustomize.

Each shape must come out with exactly one kvfs kv-transfer-config in effect (the command line's, as the shell
splits it, plus what kvfs' vLLM plugin adds from the environment), one PYTHONHASHSEED, the shared claim at the
connector's root and a writable multiprocess metrics directory -- or be refused with a one-line reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import manifest_checks as mc
import pytest
import yaml
from manifest_render import MANIFESTS, REPO, k8s_versions, kustomize_command, validate_object

from connector.plugin import (
    EXTRA_ENV,
    ROOT_ENV,
    WiringError,
    clear_stale_metric_files,
    documented_config,
    effective_transfer_config,
)

COMPONENT = MANIFESTS / "components" / "kvfs-engine"
ROOT = "/mnt/files-storage"
KVFS_JSON = json.dumps(documented_config(), separators=(",", ":"))

POD = """
securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 2000, fsGroup: 2000}
containers:
  - name: vllm
    image: registry.example.com/ml/kvfs-engine:0.1.0
"""


def deployment(name: str, container: str, pod_extra: str = "") -> str:
    spec = textwrap.indent(POD + textwrap.indent(textwrap.dedent(container), "    ") + pod_extra, " " * 8)
    return (
        textwrap.dedent(
            f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {name}
          labels: {{app: {name}, kvfs.io/connector: enabled}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
        """
        )
        + spec
    )


# name -> (workload YAML, the vLLM arguments the operator wrote, which must survive)
SHAPES: dict[str, tuple[str, list[str]]] = {
    # An args list after the image's entrypoint, with env, mounts and volumes already there.
    "args-list": (
        deployment(
            "args-list",
            """
            args: ["Qwen/Qwen3-8B", "--port=8000"]
            env: [{name: HF_HOME, value: /models}]
            volumeMounts: [{name: models, mountPath: /models}]
            """,
            "\nvolumes: [{name: models, emptyDir: {}}]\n",
        ),
        ["Qwen/Qwen3-8B", "--port=8000"],
    ),
    # vLLM production-stack: the whole command in `command`, no args, env, mounts or volumes at all.
    "command-only": (
        deployment(
            "command-only",
            """
            command: ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8000"]
            """,
        ),
        ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8000"],
    ),
    # llm-d guides: one script string after `sh -c`.
    "sh-c-script": (
        deployment(
            "sh-c-script",
            """
            command: ["/bin/sh", "-c"]
            args:
              - |
                set -e
                exec vllm serve Qwen/Qwen3-0.6B \\
                  --port 8200 --enable-prefix-caching
            """,
        ),
        ["vllm", "serve", "Qwen/Qwen3-0.6B", "--port", "8200", "--enable-prefix-caching"],
    ),
    # Its own PYTHONHASHSEED (another value) and the same kvfs kv-transfer-config on its command line.
    "already-wired": (
        deployment(
            "already-wired",
            f"""
            command: ["vllm", "serve", "m", "--kv-transfer-config", '{KVFS_JSON}']
            env: [{{name: PYTHONHASHSEED, value: "42"}}]
            """,
        ),
        ["vllm", "serve", "m", "--kv-transfer-config", KVFS_JSON],
    ),
}

LWS = """
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata:
  name: {name}
  labels: {{kvfs.io/connector: {label}}}
spec:
  replicas: 1
  leaderWorkerTemplate:
    size: 2
{templates}
"""
LWS_TEMPLATE = """
    {key}:
      spec:
        containers:
          - name: vllm
            image: registry.example.com/ml/kvfs-engine:0.1.0
            command: ["/bin/sh", "-c"]
            args: ["vllm serve m --data-parallel-size 16 --data-parallel-size-local 8 {role}"]
"""


def render(tmp_path: Path, *docs: str) -> list[dict[str, Any]]:
    (tmp_path / "engine.yaml").write_text("---\n".join(docs))
    component = os.path.relpath(COMPONENT, tmp_path)  # kustomize refuses absolute component paths
    (tmp_path / "kustomization.yaml").write_text(f"resources: [engine.yaml]\ncomponents: [{component}]\n")
    proc = subprocess.run([*kustomize_command(), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def pod_specs(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return {k: lwt[k]["spec"] for k in ("leaderTemplate", "workerTemplate") if k in lwt}
    return {"template": obj["spec"]["template"]["spec"]}


def served_argv(container: dict[str, Any]) -> list[str]:
    """vLLM's argv; a container with no `command` runs the vllm/vllm-openai image's ENTRYPOINT, `vllm serve`."""
    if "command" not in container:
        return ["vllm", "serve", *container.get("args", [])]
    return mc.vllm_argv(container)


def assert_wired(pod: dict[str, Any], where: str) -> dict[str, Any]:
    """One connector config in effect, one PYTHONHASHSEED, the claim at the root, metrics on an emptyDir."""
    container = pod["containers"][0]
    names = [e["name"] for e in container.get("env") or []]
    assert len(names) == len(set(names)), f"{where}: duplicate env {names}"
    assert names.count("PYTHONHASHSEED") == 1 and mc.env_of(container)["PYTHONHASHSEED"] == "0", where
    vllm = served_argv(container)
    assert vllm[:2] == ["vllm", "serve"], (
        f"{where}: no `vllm serve` as the shell runs it: {mc.argv(container)}"
    )
    flags = [a for a in vllm if a.split("=", 1)[0] == mc.KV_TRANSFER_FLAG]
    assert len(flags) <= 1, where
    raw = mc.flag_value(vllm, mc.KV_TRANSFER_FLAG)
    cfg = effective_transfer_config(None if raw is None else json.loads(raw), mc.env_of(container))
    assert cfg is not None, f"{where}: the connector is not enabled"
    assert dict(cfg) == {**documented_config()}, where
    w = mc.Workload({"kind": "Pod", "metadata": {"name": where}}, pod, container)
    held = mc.mount_for(w, ROOT)
    assert held is not None and mc.claim_of(held[1]) == "kvfs-shared", where
    metrics = mc.env_of(container)["PROMETHEUS_MULTIPROC_DIR"]
    held = mc.mount_for(w, metrics)
    assert held is not None and "emptyDir" in held[1] and not held[0].get("readOnly"), where
    vols = [v["name"] for v in pod["volumes"]]
    assert len(vols) == len(set(vols)), f"{where}: duplicate volumes {vols}"
    return container


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_deployment_shape_gets_exactly_one_connector_seed_and_mount(shape: str, tmp_path: Path) -> None:
    text, theirs = SHAPES[shape]
    (dep,) = render(tmp_path, text)
    container = assert_wired(dep["spec"]["template"]["spec"], shape)
    assert served_argv(container)[-len(theirs) :] == theirs  # theirs, kept and nothing appended
    for version in k8s_versions():
        assert validate_object(dep, version) == []


def test_the_render_keeps_everything_else_of_the_container(tmp_path: Path) -> None:
    (dep,) = render(tmp_path, SHAPES["args-list"][0])
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["Qwen/Qwen3-8B", "--port=8000"] and "command" not in c
    assert {"HF_HOME", ROOT_ENV, "PYTHONHASHSEED", "PROMETHEUS_MULTIPROC_DIR"} == {
        e["name"] for e in c["env"]
    }
    assert [m["name"] for m in c["volumeMounts"]][0] == "models"


@pytest.mark.parametrize(
    ("label", "keys"),
    [("enabled", ["workerTemplate"]), ("leader-and-workers", ["leaderTemplate", "workerTemplate"])],
)
def test_leader_worker_sets(label: str, keys: list[str], tmp_path: Path) -> None:
    templates = "".join(
        LWS_TEMPLATE.format(key=k, role="--headless" if k == "workerTemplate" else "") for k in keys
    )
    (lws,) = render(tmp_path, LWS.format(name="ms", label=label, templates=templates))
    pods = pod_specs(lws)
    assert sorted(pods) == keys  # an absent leaderTemplate (the leader runs the worker template) stays absent
    for key, pod in pods.items():
        assert_wired(pod, key)


def test_a_different_kv_transfer_config_on_the_command_line_is_refused(tmp_path: Path) -> None:
    other = '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
    text = deployment("lmcache", f"""command: ["vllm", "serve", "m", "--kv-transfer-config", '{other}']""")
    (dep,) = render(tmp_path, text)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    with pytest.raises(WiringError, match=r"already has --kv-transfer-config.*LMCacheConnectorV1.*remove"):
        effective_transfer_config(json.loads(other), mc.env_of(container))
    w = mc.Workload(dep, dep["spec"]["template"]["spec"], container)
    with pytest.raises(WiringError):
        mc.kv_transfer_config(w)


def test_a_script_with_the_flag_after_it_is_not_a_connector() -> None:
    """What today's append-to-args patch produced for `sh -c`: the flag becomes the shell's $0, vLLM never sees it."""
    container = {
        "command": ["/bin/sh", "-c"],
        "args": ["vllm serve m --port 8000", mc.KV_TRANSFER_FLAG, KVFS_JSON],
    }
    assert mc.vllm_argv(container) == ["vllm", "serve", "m", "--port", "8000"]
    w = mc.Workload({"kind": "Deployment"}, {"containers": [container]}, container)
    assert (
        mc.engines([{"kind": "Deployment", "spec": {"template": {"spec": {"containers": [container]}}}}])
        == []
    )
    with pytest.raises(ValueError, match="no --kv-transfer-config"):
        mc.kv_transfer_config(w)


def test_plugin_environment_is_validated() -> None:
    assert effective_transfer_config(None, {}) is None
    env = {ROOT_ENV: "/kv", EXTRA_ENV: '{"block_size": 512}'}
    cfg = effective_transfer_config(None, env)
    assert cfg["kv_connector_extra_config"]["kvfs_root"] == "/kv"
    assert cfg["kv_connector_extra_config"]["block_size"] == 512
    for bad, message in (
        ({ROOT_ENV: "relative"}, "absolute"),
        ({ROOT_ENV: "/kv", EXTRA_ENV: "{"}, "not JSON"),
        ({ROOT_ENV: "/kv", EXTRA_ENV: "[1]"}, "JSON object"),
        ({ROOT_ENV: "/kv", EXTRA_ENV: '{"kvfs_root": "/x"}'}, "cannot set kvfs_root"),
        ({ROOT_ENV: "/kv", EXTRA_ENV: '{"kvfs_io_threads": "many"}'}, "refuses"),
        ({ROOT_ENV: "/kv", EXTRA_ENV: '{"kvfs_iothreads": 4}'}, "unknown kvfs connector setting"),
    ):
        with pytest.raises(WiringError, match=message):
            effective_transfer_config(None, bad)


def test_previous_runs_metric_files_are_removed_not_this_process_nor_other_files(tmp_path: Path) -> None:
    for name in ("counter_1.db", "gauge_all_77.db", f"counter_{os.getpid()}.db", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "counter_5.db").write_text("x")
    (tmp_path / "link_9.db").symlink_to(tmp_path / "notes.txt")
    assert clear_stale_metric_files(tmp_path) == 2  # regular files only: a planted link is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"counter_{os.getpid()}.db",
        "link_9.db",
        "notes.txt",
        "sub",
    ]
    assert clear_stale_metric_files(tmp_path / "new") == 0 and (tmp_path / "new").is_dir()


# The real vLLM: its parser reads each shape's vLLM command line, kvfs' plugin is registered as vLLM's plugin loader
# does (in the same process, before parsing), and vLLM's own EngineArgs.create_engine_config is called. It then
# fails to find the made-up model (offline), after the plugin set the connector -- or the plugin refuses first.
VLLM_SCRIPT = """
import json, os, sys
from vllm import platforms
from vllm.platforms.cpu import CpuPlatform
if platforms.current_platform.is_unspecified():
    platforms.current_platform = CpuPlatform()
import vllm.entrypoints.cli.serve as serve
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser
import connector.plugin as plugin

out = []
for argv, env in json.loads(sys.argv[1]):
    for key in (plugin.ROOT_ENV, plugin.EXTRA_ENV):
        os.environ.pop(key, None)
    os.environ.update(env)
    plugin.register()
    parser = FlexibleArgumentParser(prog="vllm")
    (cmd,) = serve.cmd_init()
    cmd.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(argv[1:])
    args.model = args.model_tag or args.model  # what `vllm serve`'s command does before building its engine
    engine_args = AsyncEngineArgs.from_cli_args(args)
    result = {"wrapped": getattr(EngineArgs.create_engine_config, "_kvfs_wired", False)}
    try:
        engine_args.create_engine_config()
    except plugin.WiringError as exc:
        result["refused"] = str(exc)
    except Exception:
        pass  # the made-up model: vLLM got past the plugin
    ktc = engine_args.kv_transfer_config
    result["ktc"] = None if ktc is None else vars(ktc)
    out.append(result)
print(json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_runs_each_shape_with_the_kvfs_connector_or_refuses(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    cases: list[tuple[list[str], dict[str, str]]] = []
    for shape in sorted(SHAPES):
        (tmp_path / shape).mkdir()
        (dep,) = render(tmp_path / shape, SHAPES[shape][0])
        c = dep["spec"]["template"]["spec"]["containers"][0]
        cases.append((served_argv(c), mc.env_of(c)))
    other = '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
    cases.append((["vllm", "serve", "m", mc.KV_TRANSFER_FLAG, other], {ROOT_ENV: ROOT}))
    cases.append((["vllm", "serve", "m"], {}))  # kvfs installed, not enabled: nothing changes
    # Offline, vLLM resolves a model name to a download: a local directory stands in for the model (argv[2]).
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cases = [([*argv[:2], str(model), *argv[3:]], env) for argv, env in cases]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, json.dumps(cases)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = documented_config()
    for (argv, _), result in zip(cases[: len(SHAPES)], results, strict=False):
        assert result["wrapped"] and "refused" not in result, (argv, result)
        assert {k: result["ktc"][k] for k in expected} == expected, argv
    refused, untouched = results[len(SHAPES) :]
    assert (
        "LMCacheConnectorV1" in refused["refused"] and refused["ktc"]["kv_connector"] == "LMCacheConnectorV1"
    )
    assert untouched["ktc"] is None and "refused" not in untouched
