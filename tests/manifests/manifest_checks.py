"""Invariants of a rendered kvfs deployment that schema validation cannot see and that break it silently.

Each `check_*` takes the rendered objects of one kustomize tree and returns a list of problems (empty = fine),
so the tests can assert both that the shipped trees pass and that a broken copy is caught. Settings are read
the way the programs read them: the evictor's config file through `evictor.settings.load_settings`, the
connector's `kv_connector_extra_config` through `connector.config.KvfsConnectorConfig.from_extra`, the `kvfs`
CLI's arguments through its click command.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import posixpath
import re
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
KV_TRANSFER_FLAG = "--kv-transfer-config"
EVICTOR_COMMAND = "kvfs-evictor"
CLI_COMMAND = "kvfs"
VLLM_DEFAULT_PORT = 8000
# Stand-in for values a pod reads from a Secret: the real value is not in the repository by design.
SECRET_PLACEHOLDER = "postgresql+psycopg://kvfs@catalog.invalid:5432/kvfs"


# ---------------------------------------------------------------------------------------------------- lookups


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def ident(obj: Obj) -> str:
    return f"{obj.get('kind')}/{name_of(obj)}"


def find(docs: Any, kind: str, name: str | None = None) -> list[Obj]:
    return [d for d in docs if d.get("kind") == kind and (name is None or name_of(d) == name)]


def pod_spec(obj: Obj) -> Obj | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    if obj.get("kind") in WORKLOAD_KINDS:
        return ((spec.get("template") or {}).get("spec")) or {}
    return None


def pod_labels(obj: Obj) -> dict[str, str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})


def containers(pod: Obj) -> list[Obj]:
    return list(pod.get("containers") or [])


def argv(container: Obj) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


@dataclass(frozen=True)
class Workload:
    """One container of one workload, with its pod spec: the unit the invariants reason about."""

    obj: Obj
    pod: Obj
    container: Obj

    @property
    def name(self) -> str:
        return f"{ident(self.obj)}[{self.container.get('name')}]"


def iter_workloads(docs: Any) -> Iterator[Workload]:
    for obj in docs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        for c in containers(pod):
            yield Workload(obj, pod, c)


SHELLS = ("sh", "bash", "dash", "ash")
SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}


def vllm_argv(container: Obj) -> list[str]:
    """The argv vLLM gets: command + args, or the `vllm ...` command of a `sh -c SCRIPT`, split as the shell would.

    In a script, arguments after SCRIPT are the shell's $0, $1...: never vLLM's (what a patch appending to `args`
    of an llm-d-style container silently produces).
    """
    args = argv(container)
    if len(args) >= 3 and posixpath.basename(args[0]) in SHELLS and args[1] == "-c":
        script = args[2].replace("\\\n", " ")
        for line in script.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if token not in SHELL_OPERATORS:
                    segment.append(token)
                    continue
                words = list(segment)
                while words and (words[0] == "exec" or re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0])):
                    words.pop(0)  # `exec` and leading VAR=value assignments
                if words and posixpath.basename(words[0]) == "vllm":
                    return words
                segment = []
        return []
    return args


def wiring_env_enabled(container: Obj) -> bool:
    from connector.plugin import ROOT_ENV

    return bool(env_of(container).get(ROOT_ENV))


def engines(docs: Any) -> list[Workload]:
    """vLLM containers with the kvfs connector: on their command line or enabled by kvfs' plugin from env."""
    return [
        w
        for w in iter_workloads(docs)
        if any(a.split("=", 1)[0] == KV_TRANSFER_FLAG for a in vllm_argv(w.container))
        or wiring_env_enabled(w.container)
    ]


def evictors(docs: Any) -> list[Workload]:
    return [w for w in iter_workloads(docs) if argv(w.container)[:1] == [EVICTOR_COMMAND]]


def cli_jobs(docs: Any) -> list[Workload]:
    return [w for w in iter_workloads(docs) if argv(w.container)[:1] == [CLI_COMMAND]]


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` (the last one wins, as in click and argparse)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def env_of(container: Obj) -> dict[str, str]:
    """The container's environment as the program sees it; Secret-sourced values become a placeholder."""
    out: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            out[item["name"]] = str(item["value"])
        elif (item.get("valueFrom") or {}).get("secretKeyRef"):
            out[item["name"]] = SECRET_PLACEHOLDER
    return out


def secret_env(container: Obj) -> dict[str, Obj]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container.get("env") or []
        if (item.get("valueFrom") or {}).get("secretKeyRef")
    }


def mount_for(w: Workload, path: str) -> tuple[Obj, Obj] | None:
    """(volumeMount, volume) holding `path` in this container: the longest mountPath prefix."""
    best: tuple[Obj, Obj] | None = None
    norm = posixpath.normpath(path)
    for m in w.container.get("volumeMounts") or []:
        mp = posixpath.normpath(m["mountPath"])
        if (norm == mp or norm.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) > len(posixpath.normpath(best[0]["mountPath"]))
        ):
            vol = next((v for v in w.pod.get("volumes") or [] if v.get("name") == m.get("name")), {})
            best = (m, vol)
    return best


def claim_of(volume: Obj) -> str | None:
    return (volume.get("persistentVolumeClaim") or {}).get("claimName")


# ------------------------------------------------------------------------------------------ program settings


def kv_transfer_config(w: Workload) -> Obj:
    """The engine's effective kv-transfer-config: its command line's, or the one kvfs' plugin adds from env.

    Raises ValueError (json's included) when there is none, or when both are there and differ (the plugin refuses
    to start such an engine).
    """
    from connector.plugin import effective_transfer_config

    raw = flag_value(vllm_argv(w.container), KV_TRANSFER_FLAG)
    cfg = effective_transfer_config(None if raw is None else json.loads(raw), env_of(w.container))
    if cfg is None:
        raise ValueError(f"{w.name}: no {KV_TRANSFER_FLAG}")
    return dict(cfg)


def connector_root(w: Workload) -> str:
    from connector.config import KvfsConnectorConfig

    extra = kv_transfer_config(w).get("kv_connector_extra_config") or {}
    return KvfsConnectorConfig.from_extra(extra).root


def engine_port(w: Workload) -> int:
    port = flag_value(vllm_argv(w.container), "--port")
    return int(port) if port is not None else VLLM_DEFAULT_PORT


def evictor_config_text(docs: Any, w: Workload) -> tuple[str, str] | None:
    """(file name, text) of the config file the evictor is pointed at, read from the ConfigMap mounted there."""
    path = flag_value(argv(w.container), "--config") or env_of(w.container).get("KVFS_CONFIG")
    if path is None:
        return None
    held = mount_for(w, path)
    if held is None:
        raise ValueError(f"{w.name}: config file {path} is on no volume")
    mount, volume = held
    cm_name = (volume.get("configMap") or {}).get("name")
    if cm_name is None:
        raise ValueError(f"{w.name}: config file {path} is not on a ConfigMap volume")
    cms = find(docs, "ConfigMap", cm_name)
    if not cms:
        raise ValueError(f"{w.name}: ConfigMap {cm_name} is not in the rendering")
    key = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(mount["mountPath"]))
    data = cms[0].get("data") or {}
    if key not in data:
        raise ValueError(f"{w.name}: ConfigMap {cm_name} has no key {key!r} (has {sorted(data)})")
    return key, data[key]


def evictor_config_keys(docs: Any, w: Workload) -> list[str]:
    import yaml

    held = evictor_config_text(docs, w)
    if held is None:
        return []
    return [str(k).replace("-", "_") for k in (yaml.safe_load(held[1]) or {})]


def evictor_flags(w: Workload) -> dict[str, Any]:
    """The container's `kvfs-evictor` arguments parsed by the evictor's own click command (unset flags: None).

    Raises click.UsageError / BadParameter for a flag the evictor does not have, as the pod would at start-up.
    """
    from evictor.cli import run_cmd

    ctx = run_cmd.make_context(EVICTOR_COMMAND, argv(w.container)[1:], resilient_parsing=False)
    return dict(ctx.params)


def evictor_settings(docs: Any, w: Workload) -> Any:
    """The evictor's effective Settings: its flags, environment and ConfigMap file, through its own loader."""
    from evictor.settings import load_settings

    flags = evictor_flags(w)
    held = evictor_config_text(docs, w)
    env = env_of(w.container)
    env.pop("KVFS_CONFIG", None)
    with tempfile.TemporaryDirectory() as tmp:
        flags["config"] = None
        if held is not None:
            flags["config"] = str(Path(tmp) / held[0])
            Path(flags["config"]).write_text(held[1])
        return load_settings(flags=flags, environ=env)


def cli_invocation(w: Workload) -> tuple[click.Context, click.Context]:
    """Parse a `kvfs ...` container command with the real click command: (group context, subcommand context).

    Raises click.UsageError / BadParameter for unknown flags or bad values, as the job would at run time.
    """
    from kvfs.cli import main

    args = argv(w.container)[1:]
    if len(args) == 1 and " " in args[0]:
        args = shlex.split(args[0])
    ctx = main.make_context(CLI_COMMAND, list(args), resilient_parsing=False)
    rest = list(getattr(ctx, "_protected_args", []) or []) + list(ctx.args)
    if not rest:
        raise click.UsageError("no subcommand")
    name, cmd, sub_args = main.resolve_command(ctx, rest)
    if cmd is None:
        raise click.UsageError(f"no such command {rest[0]!r}")
    sub = cmd.make_context(name or "", list(sub_args), parent=ctx, resilient_parsing=False)
    return ctx, sub


def cli_root_and_catalog(w: Workload) -> tuple[str, str | None]:
    ctx, _ = cli_invocation(w)
    env = env_of(w.container)
    root = flag_value(argv(w.container), "--root") or env.get("KVFS_ROOT") or str(ctx.params["root"])
    catalog = (
        flag_value(argv(w.container), "--catalog") or env.get("KVFS_CATALOG") or ctx.params.get("catalog_url")
    )
    return str(root), catalog


def sqlite_path(url: str) -> str | None:
    """The file of an SQLite catalog URL (or bare path); None for any other database."""
    if url.startswith("sqlite:///"):
        return "/" + url[len("sqlite:///") :].lstrip("/")
    if "://" not in url:
        return url
    return None


# ------------------------------------------------------------------------------------------------- checks


ENGINE_COMMAND = ["kvfs-engine-entrypoint", "vllm", "serve"]


def check_engine_metrics(docs: Any) -> list[str]:
    """Engines run vLLM through the image's wrapper with a writable multiprocess metrics directory.

    The kvfs connector counts in vLLM's engine-core and worker processes; only with PROMETHEUS_MULTIPROC_DIR
    does vLLM's /metrics (the API-server process) carry those counters, and the wrapper empties the directory
    of a previous run's files.
    """
    problems: list[str] = []
    for w in engines(docs):
        # Either the image's wrapper or kvfs' plugin (enabled from env) clears the previous run's files.
        if argv(w.container)[:3] != ENGINE_COMMAND and not wiring_env_enabled(w.container):
            problems.append(f"{w.name}: command {argv(w.container)[:3]} is not {ENGINE_COMMAND}")
        directory = env_of(w.container).get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            problems.append(
                f"{w.name}: no PROMETHEUS_MULTIPROC_DIR: /metrics would miss the connector's counters"
            )
            continue
        held = mount_for(w, directory)
        if held is None or held[0].get("readOnly"):
            problems.append(f"{w.name}: PROMETHEUS_MULTIPROC_DIR {directory} is not on a writable volume")
        elif claim_of(held[1]) is not None:
            problems.append(f"{w.name}: PROMETHEUS_MULTIPROC_DIR {directory} is on a shared claim")
    return problems


def check_shared_claim(docs: Any) -> list[str]:
    """Engines, evictors and CLI jobs mount the same RWX claim at the same path (the engines' path)."""
    problems: list[str] = []
    eng = engines(docs)
    if not eng:
        return ["no engine workload (a container with --kv-transfer-config)"]
    engine_root = connector_root(eng[0])
    seen: set[tuple[str | None, str]] = set()
    for w in eng + evictors(docs) + cli_jobs(docs):
        root = connector_root(w) if w in eng else engine_root
        held = mount_for(w, root)
        if held is None or claim_of(held[1]) is None:
            problems.append(f"{w.name}: the KV root {root} is not on a PersistentVolumeClaim")
            continue
        seen.add((claim_of(held[1]), posixpath.normpath(held[0]["mountPath"])))
        if held[0].get("readOnly"):
            problems.append(f"{w.name}: the shared claim is mounted read-only")
    if len(seen) > 1:
        problems.append(f"workloads disagree on the shared claim/mount path: {sorted(seen, key=str)}")
    for claim, _ in seen:
        pvcs = find(docs, "PersistentVolumeClaim", claim)
        if not pvcs:
            problems.append(f"PersistentVolumeClaim {claim} is not in the rendering")
        elif "ReadWriteMany" not in (pvcs[0].get("spec") or {}).get("accessModes", []):
            problems.append(f"PersistentVolumeClaim {claim} is not ReadWriteMany")
    return problems


# Keys of the kv-transfer-config that must be exactly what the connector documents (the rest is tuning).
CONNECTOR_IDENTITY = ("kv_connector", "kv_connector_module_path", "kv_role", "kv_load_failure_policy")
SPEC_IDENTITY = ("spec_name", "spec_module_path")


def module_source(module: str) -> ast.Module | None:
    """The parsed source of a module, found without importing it (vLLM imports are slow and need no GPU here)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)))
    parts = rest.split(".") if rest else []
    for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if parts and candidate.exists():
            return ast.parse(candidate.read_text())
    return ast.parse((base / "__init__.py").read_text()) if not parts else None


def defines_class(module: str, name: str) -> bool:
    tree = module_source(module)
    return tree is not None and any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)


def documented_connector_config() -> Obj:
    """The kv-transfer-config JSON of connector.spec.CONNECTOR_HINT (the connector's own usage line)."""
    tree = module_source("connector.spec")
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "CONNECTOR_HINT" for t in node.targets
        ):
            hint = ast.literal_eval(node.value)
            return json.loads(shlex.split(hint)[1])
    raise ValueError("connector.spec defines no CONNECTOR_HINT")


def kv_transfer_fields() -> set[str] | None:
    """Field names of vLLM's KVTransferConfig, read from the installed source (None: vLLM not installed)."""
    tree = module_source("vllm.config.kv_transfer")
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "KVTransferConfig":
            return {
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
    return None


def check_connector_config(docs: Any) -> list[str]:
    """Engines load the kvfs connector exactly as the connector documents it, with settings it accepts."""
    from connector.config import ConfigError, KvfsConnectorConfig

    problems: list[str] = []
    documented = documented_connector_config()
    vllm_fields = kv_transfer_fields()
    for w in engines(docs):
        try:
            cfg = kv_transfer_config(w)
        except ValueError as exc:  # json.JSONDecodeError included
            problems.append(f"{w.name}: {KV_TRANSFER_FLAG} is not JSON: {exc}")
            continue
        extra = cfg.get("kv_connector_extra_config") or {}
        for key in CONNECTOR_IDENTITY:
            if cfg.get(key) != documented.get(key):
                problems.append(
                    f"{w.name}: {key}={cfg.get(key)!r}, the connector documents {documented.get(key)!r}"
                )
        for key in SPEC_IDENTITY:
            if extra.get(key) != documented["kv_connector_extra_config"].get(key):
                problems.append(
                    f"{w.name}: kv_connector_extra_config.{key}={extra.get(key)!r} is not the documented one"
                )
        if cfg.get("kv_connector_module_path") and not defines_class(
            cfg["kv_connector_module_path"], cfg["kv_connector"]
        ):
            problems.append(
                f"{w.name}: {cfg['kv_connector_module_path']} defines no class {cfg['kv_connector']}"
            )
        if extra.get("spec_module_path") and not defines_class(
            extra["spec_module_path"], extra.get("spec_name", "")
        ):
            problems.append(
                f"{w.name}: {extra['spec_module_path']} defines no class {extra.get('spec_name')}"
            )
        if vllm_fields is not None and (unknown := set(cfg) - vllm_fields):
            problems.append(f"{w.name}: vLLM's KVTransferConfig has no field(s) {sorted(unknown)}")
        try:
            KvfsConnectorConfig.from_extra(extra)
        except ConfigError as exc:
            problems.append(f"{w.name}: the connector would refuse its settings: {exc}")
        env = env_of(w.container)
        if not env.get("PYTHONHASHSEED", "").isdigit():
            problems.append(f"{w.name}: PYTHONHASHSEED is not pinned to a number (block names would differ)")
    seeds = {env_of(w.container).get("PYTHONHASHSEED") for w in engines(docs)}
    if len(seeds) > 1:
        problems.append(f"engines use different PYTHONHASHSEEDs: {sorted(map(str, seeds))}")
    return problems


def check_roots(docs: Any) -> list[str]:
    """The evictor's `root` and the CLI jobs' `--root` equal the engines' connector root, which is mounted."""
    problems: list[str] = []
    roots = {w.name: connector_root(w) for w in engines(docs)}
    if len(set(roots.values())) > 1:
        problems.append(f"engines disagree on the connector root: {roots}")
    if not roots:
        return ["no engine workload"]
    engine_root = next(iter(roots.values()))
    for w in evictors(docs):
        root = str(evictor_settings(docs, w).root)
        if posixpath.normpath(root) != posixpath.normpath(engine_root):
            problems.append(f"{w.name}: evictor root {root} != connector root {engine_root}")
    for w in cli_jobs(docs):
        root, _ = cli_root_and_catalog(w)
        if posixpath.normpath(root) != posixpath.normpath(engine_root):
            problems.append(f"{w.name}: kvfs --root {root} != connector root {engine_root}")
    return problems


def check_evictor_config_keys(docs: Any) -> list[str]:
    """Every key of the evictor's config file and every KVFS_* variable of its container is a real setting."""
    from evictor.settings import ENV_PREFIX, setting_names

    known = set(setting_names())
    problems: list[str] = []
    for w in evictors(docs):
        try:
            keys = evictor_config_keys(docs, w)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{w.name}: config key {k!r} is not an evictor setting" for k in keys if k not in known]
        for var in env_of(w.container) | secret_env(w.container):
            if var.startswith(ENV_PREFIX) and var[len(ENV_PREFIX) :].lower() not in known:
                problems.append(f"{w.name}: env {var} names no evictor setting (it would be ignored)")
        if not problems:
            try:
                evictor_settings(docs, w)
            except Exception as exc:  # noqa: BLE001 - any load failure is the finding
                problems.append(f"{w.name}: the evictor would refuse this configuration: {exc}")
    return problems


def _container_port(w: Workload, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in w.container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _check_serving(docs: Any, w: Workload, port: int, probes: dict[str, str], scrape_path: str) -> list[str]:
    """Probes hit `port` at the expected paths; a Service maps to it; a ServiceMonitor scrapes it."""
    problems: list[str] = []
    declared = {int(p["containerPort"]) for p in w.container.get("ports") or []}
    if port not in declared:
        problems.append(f"{w.name}: serves on {port} but declares container ports {sorted(declared)}")
    for probe_name, path in probes.items():
        probe = w.container.get(probe_name)
        if probe is None:
            problems.append(f"{w.name}: no {probe_name}")
            continue
        http = probe.get("httpGet") or {}
        target = _container_port(w, http.get("port", -1))
        if target != port:
            problems.append(
                f"{w.name}: {probe_name} targets port {http.get('port')} ({target}), serving on {port}"
            )
        if http.get("path") != path:
            problems.append(f"{w.name}: {probe_name} path {http.get('path')} != {path}")
    labels = pod_labels(w.obj)
    services = [
        s
        for s in find(docs, "Service")
        if (sel := (s.get("spec") or {}).get("selector")) and all(labels.get(k) == v for k, v in sel.items())
    ]
    svc_ports = {
        p.get("name"): p
        for s in services
        for p in (s.get("spec") or {}).get("ports") or []
        if _container_port(w, p.get("targetPort", p.get("port"))) == port
    }
    if not svc_ports:
        problems.append(f"{w.name}: no Service port reaches container port {port}")
        return problems
    monitors = [
        m
        for m in find(docs, "ServiceMonitor")
        for s in services
        if all(
            (s.get("metadata") or {}).get("labels", {}).get(k) == v
            for k, v in ((m.get("spec") or {}).get("selector") or {}).get("matchLabels", {}).items()
        )
    ]
    if not monitors:
        problems.append(f"{w.name}: no ServiceMonitor selects its Service")
    for m in monitors:
        for ep in (m.get("spec") or {}).get("endpoints") or []:
            if ep.get("port") not in svc_ports:
                problems.append(
                    f"{ident(m)}: endpoint port {ep.get('port')!r} is not a Service port to {port}"
                )
            if ep.get("path", "/metrics") != scrape_path:
                problems.append(f"{ident(m)}: scrapes {ep.get('path')} not {scrape_path}")
    return problems


def check_ports(docs: Any) -> list[str]:
    """Probes, Services and ServiceMonitors point at the ports the evictor and vLLM really serve."""
    problems: list[str] = []
    for w in evictors(docs):
        port = evictor_settings(docs, w).metrics_port
        problems += _check_serving(
            docs, w, port, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}, "/metrics"
        )
    for w in engines(docs):
        problems += _check_serving(
            docs, w, engine_port(w), {"livenessProbe": "/health", "readinessProbe": "/health"}, "/metrics"
        )
    return problems


def _catalog_problems(docs: Any, w: Workload, url: str, source: str) -> list[str]:
    problems: list[str] = []
    path = sqlite_path(url)
    if path is None:
        if source != "secret":
            problems.append(f"{w.name}: the database URL is not read from a Secret (it may hold a password)")
        return problems
    held = mount_for(w, path)
    shared = {claim_of(m[1]) for e in engines(docs) if (m := mount_for(e, connector_root(e)))}
    if held is None:
        problems.append(
            f"{w.name}: SQLite catalog {path} is on the container's root filesystem (lost on restart)"
        )
        return problems
    mount, volume = held
    claim = claim_of(volume)
    if claim in shared:
        problems.append(f"{w.name}: SQLite catalog {path} is on the shared claim {claim}")
    elif claim is None:
        problems.append(f"{w.name}: SQLite catalog {path} is on a non-persistent volume {mount['name']}")
    else:
        pvc = find(docs, "PersistentVolumeClaim", claim)
        modes = (pvc[0].get("spec") or {}).get("accessModes", []) if pvc else []
        if "ReadWriteOnce" not in modes and "ReadWriteOncePod" not in modes:
            problems.append(f"{w.name}: SQLite catalog claim {claim} is not ReadWriteOnce ({modes})")
    if mount.get("readOnly"):
        problems.append(f"{w.name}: SQLite catalog {path} is on a read-only mount")
    return problems


def check_catalog_location(docs: Any) -> list[str]:
    """SQLite catalogs sit on their own persistent RWO volume, never the shared claim; DB URLs come from Secrets."""
    problems: list[str] = []
    for w in evictors(docs):
        url = evictor_settings(docs, w).catalog
        source = "secret" if "KVFS_CATALOG" in secret_env(w.container) else "config"
        problems += _catalog_problems(docs, w, url, source)
    for w in cli_jobs(docs):
        _, url = cli_root_and_catalog(w)
        if url is None:
            problems.append(
                f"{w.name}: no --catalog/KVFS_CATALOG: the default is under $HOME, lost with the pod"
            )
            continue
        source = "secret" if "KVFS_CATALOG" in secret_env(w.container) else "args"
        problems += _catalog_problems(docs, w, url, source)
    return problems


def _effective(w: Workload, key: str) -> Any:
    csc = w.container.get("securityContext") or {}
    psc = w.pod.get("securityContext") or {}
    return csc.get(key, psc.get(key))


def check_security(docs: Any) -> list[str]:
    """Evictor and CLI pods meet the "restricted" profile; engines run unprivileged too."""
    problems: list[str] = []
    for w in evictors(docs) + cli_jobs(docs) + engines(docs):
        strict = w not in engines(docs)
        csc = w.container.get("securityContext") or {}
        if _effective(w, "runAsNonRoot") is not True:
            problems.append(f"{w.name}: runAsNonRoot is not true")
        if _effective(w, "runAsUser") in (None, 0):
            problems.append(f"{w.name}: no non-zero runAsUser")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{w.name}: allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            problems.append(f"{w.name}: privileged")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{w.name}: capabilities do not drop ALL")
        if (_effective(w, "seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{w.name}: seccompProfile is not RuntimeDefault")
        if strict and csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{w.name}: readOnlyRootFilesystem is not true")
        if strict and (csc.get("capabilities") or {}).get("add"):
            problems.append(f"{w.name}: adds capabilities")
        for v in w.pod.get("volumes") or []:
            if "hostPath" in v:
                problems.append(f"{w.name}: hostPath volume {v.get('name')}")
        if strict and w.pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{w.name}: mounts a service-account token it does not need")
    return problems


RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def check_pod_security_restricted(docs: Any) -> list[str]:
    """The namespace enforces Pod Security "restricted" and every pod of the rendering meets it.

    The rules of the restricted profile (which includes baseline) that a pod spec can break, per container and
    init container: no host namespaces or ports, not privileged, no privilege escalation, non-root with a
    non-zero uid, seccomp RuntimeDefault/Localhost, capabilities drop ALL and add at most NET_BIND_SERVICE, and
    only the allowed volume types.
    """
    problems: list[str] = []
    namespaces = find(docs, "Namespace")
    for ns in namespaces:
        level = ((ns.get("metadata") or {}).get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        if level != "restricted":
            problems.append(f"{ident(ns)}: enforces Pod Security {level!r}, not 'restricted'")
    for obj in docs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        psc = pod.get("securityContext") or {}
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                problems.append(f"{ident(obj)}: {key}")
        for v in pod.get("volumes") or []:
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUME_TYPES:
                problems.append(f"{ident(obj)}: volume {v.get('name')} of type {sorted(kinds)}")
        for c in containers(pod) + list(pod.get("initContainers") or []):
            csc = c.get("securityContext") or {}
            where = f"{ident(obj)}[{c.get('name')}]"

            def eff(key: str, csc: Obj = csc, psc: Obj = psc) -> Any:
                return csc.get(key, psc.get(key))

            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if eff("runAsNonRoot") is not True or eff("runAsUser") == 0:
                problems.append(f"{where}: may run as root")
            if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile is not RuntimeDefault or Localhost")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                problems.append(f"{where}: capabilities must drop ALL and add at most NET_BIND_SERVICE")
            if any(p.get("hostPort") for p in c.get("ports") or []):
                problems.append(f"{where}: hostPort")
    return problems


def check_identity(docs: Any) -> list[str]:
    """Engines, evictors and CLI jobs share uid, gid and fsGroup, so the evictor can unlink engines' files."""
    ids = {
        w.name: (
            _effective(w, "runAsUser"),
            _effective(w, "runAsGroup"),
            (w.pod.get("securityContext") or {}).get("fsGroup"),
        )
        for w in engines(docs) + evictors(docs) + cli_jobs(docs)
    }
    problems = [f"{name}: no fsGroup" for name, (_, _, fs) in ids.items() if fs is None]
    if len(set(ids.values())) > 1:
        problems.append(f"runAsUser/runAsGroup/fsGroup differ: {ids}")
    return problems


def check_references(docs: Any) -> list[str]:
    """Mounts name pod volumes; ConfigMaps and claims exist; selectors match their pod templates."""
    problems: list[str] = []
    for obj in docs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        vols = {v.get("name"): v for v in pod.get("volumes") or []}
        for c in containers(pod) + list(pod.get("initContainers") or []):
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in vols:
                    problems.append(f"{ident(obj)}[{c.get('name')}]: mount {m.get('name')} names no volume")
        for v in vols.values():
            if (cm := (v.get("configMap") or {}).get("name")) and not find(docs, "ConfigMap", cm):
                problems.append(f"{ident(obj)}: ConfigMap {cm} is not in the rendering")
            if (claim := claim_of(v)) and not find(docs, "PersistentVolumeClaim", claim):
                problems.append(f"{ident(obj)}: claim {claim} is not in the rendering")
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            sel = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            labels = pod_labels(obj)
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                problems.append(f"{ident(obj)}: selector {sel} does not match the pod labels {labels}")
        if (sa := pod.get("serviceAccountName")) and not find(docs, "ServiceAccount", sa):
            problems.append(f"{ident(obj)}: ServiceAccount {sa} is not in the rendering")
    return problems


def check_evictor_singleton(docs: Any) -> list[str]:
    """An SQLite-catalog evictor is one replica, recreated (never two pods on one SQLite file)."""
    problems: list[str] = []
    for w in evictors(docs):
        url = evictor_settings(docs, w).catalog
        spec = w.obj.get("spec") or {}
        if sqlite_path(url) is not None:
            if spec.get("replicas", 1) != 1:
                problems.append(f"{w.name}: {spec.get('replicas')} replicas on one SQLite catalog")
            if w.obj.get("kind") == "Deployment" and (spec.get("strategy") or {}).get("type") != "Recreate":
                problems.append(f"{w.name}: SQLite catalog needs strategy Recreate")
    return problems


ALL_CHECKS = (
    check_connector_config,
    check_engine_metrics,
    check_shared_claim,
    check_roots,
    check_evictor_config_keys,
    check_ports,
    check_catalog_location,
    check_security,
    check_pod_security_restricted,
    check_identity,
    check_references,
    check_evictor_singleton,
)


def all_problems(docs: Any) -> list[str]:
    out: list[str] = []
    for check in ALL_CHECKS:
        try:
            out += check(docs)
        except Exception as exc:  # noqa: BLE001 - a check that cannot even read the objects is a finding
            out.append(f"{check.__name__}: {type(exc).__name__}: {exc}")
    return out
