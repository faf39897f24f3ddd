"""vLLM general plugin: the kvfs connector enabled from the environment, whatever the engine's command line looks like.

Fleets start vLLM in many shapes (an args list, the whole `vllm serve ...` in `command`, a `sh -c` script, a
LeaderWorkerSet), and editing each command line is fragile. Instead, an engine whose environment has
`KVFS_CONNECTOR_ROOT` gets the kvfs `--kv-transfer-config` (exactly `connector.spec.CONNECTOR_HINT`, with that
root) added by this plugin, which vLLM loads in every process through the `vllm.general_plugins` entry point.
Without that variable the plugin changes nothing: installing kvfs alone never turns the connector on.

* `KVFS_CONNECTOR_ROOT`: the shared mount (= `kvfs_root`); setting it enables the connector.
* `KVFS_CONNECTOR_EXTRA_CONFIG`: optional JSON object of connector settings merged into
  `kv_connector_extra_config` (e.g. `{"kvfs_max_staging": "8GiB"}`); the spec's identity and root cannot be changed.
* An engine that also has its own `--kv-transfer-config` is refused at start-up, with one line saying so, unless
  that is the same kvfs configuration (then it is used once).
* `PROMETHEUS_MULTIPROC_DIR` (set by the manifests): the connector counts in engine-core and worker processes, so
  vLLM's `/metrics` must aggregate every process' metric files. vLLM only wipes that directory when it created
  it; the plugin removes a previous run's files when the serving process (process 0) starts.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT_ENV = "KVFS_CONNECTOR_ROOT"
EXTRA_ENV = "KVFS_CONNECTOR_EXTRA_CONFIG"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Keys of kv_connector_extra_config that name the spec and its root: the environment cannot override them.
_FIXED_EXTRA = ("spec_name", "spec_module_path", "kvfs_root")

log = logging.getLogger("kvfs.connector.plugin")
_cleared = False  # this process already removed the previous run's metric files


class WiringError(ValueError):
    """The environment and the command line disagree about the connector: one line saying what to change."""


def documented_config() -> dict[str, Any]:
    """The kv-transfer-config of connector.spec.CONNECTOR_HINT (the connector's own usage line), as a dict."""
    from connector.spec import CONNECTOR_HINT

    return json.loads(shlex.split(CONNECTOR_HINT)[1])


def kvfs_transfer_config(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The kv-transfer-config the environment asks for, or None when KVFS_CONNECTOR_ROOT is not set."""
    root = environ.get(ROOT_ENV, "").strip()
    if not root:
        return None
    if not root.startswith("/"):
        raise WiringError(f"kvfs: {ROOT_ENV}={root!r} must be an absolute path (the shared mount)")
    cfg = documented_config()
    extra: dict[str, Any] = cfg["kv_connector_extra_config"]
    raw = environ.get(EXTRA_ENV, "").strip()
    if raw:
        try:
            more = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise WiringError(f"kvfs: {EXTRA_ENV} is not JSON: {exc}") from None
        if not isinstance(more, dict):
            raise WiringError(f"kvfs: {EXTRA_ENV} must be a JSON object, got {type(more).__name__}")
        if fixed := sorted(set(more) & set(_FIXED_EXTRA)):
            raise WiringError(
                f"kvfs: {EXTRA_ENV} cannot set {', '.join(fixed)} (use {ROOT_ENV} for the root)"
            )
        extra.update(more)
    extra["kvfs_root"] = root
    from connector.config import ConfigError, KvfsConnectorConfig

    try:
        KvfsConnectorConfig.from_extra(extra)
    except ConfigError as exc:
        raise WiringError(f"kvfs: the connector refuses {EXTRA_ENV}: {exc}") from None
    return cfg


def _as_dict(existing: Any) -> dict[str, Any]:
    if isinstance(existing, Mapping):
        return dict(existing)
    if hasattr(existing, "model_dump"):
        return dict(existing.model_dump())
    return dict(vars(existing))


def effective_transfer_config(existing: Any, environ: Mapping[str, str]) -> Any:
    """What the engine runs with: the command line's config (`existing`, None when absent) and the environment's.

    Exactly one connector: the environment's when the command line has none, the command line's when the
    environment asks for nothing, either when both are the same kvfs configuration; else WiringError.
    """
    wanted = kvfs_transfer_config(environ)
    if wanted is None or existing is None:
        return existing if wanted is None else wanted
    have = _as_dict(existing)
    if all(have.get(k) == v for k, v in wanted.items()):
        return existing
    raise WiringError(
        f"kvfs: {ROOT_ENV} is set (the kvfs connector at {wanted['kv_connector_extra_config']['kvfs_root']}) "
        f"but the command line already has --kv-transfer-config with kv_connector="
        f"{have.get('kv_connector')!r}, {json.dumps(have.get('kv_connector_extra_config'), default=str)}: "
        f"remove that flag (or unset {ROOT_ENV} to keep it)"
    )


def apply(engine_args: Any, environ: Mapping[str, str] | None = None) -> None:
    """Set `engine_args.kv_transfer_config` (vLLM's EngineArgs) from the environment, as vLLM would parse it."""
    env = os.environ if environ is None else environ
    existing = engine_args.kv_transfer_config
    chosen = effective_transfer_config(existing, env)
    if chosen is existing:
        return
    from vllm.config import KVTransferConfig

    engine_args.kv_transfer_config = KVTransferConfig(**chosen)
    log.info("kvfs: connector enabled from %s=%s", ROOT_ENV, env.get(ROOT_ENV))


def clear_stale_metric_files(directory: str | os.PathLike[str]) -> int:
    """Remove a previous run's prometheus_client files (`*.db` directly in `directory`, none of this process)."""
    removed = 0
    mine = f"_{os.getpid()}.db"
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return 0
    for entry in entries:
        if (
            entry.name.endswith(".db")
            and not entry.name.endswith(mine)
            and entry.is_file(follow_symlinks=False)
        ):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _is_serving_process() -> bool:
    """Process 0 of `vllm serve` (console script or `python -m vllm.entrypoints...`), which starts the others.

    Not engine-core or worker processes (multiprocessing children), nor Ray workers (started by Ray, argv is
    Ray's): those must never remove files the serving process' siblings are writing.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    return multiprocessing.parent_process() is None and (
        Path(argv0).name == "vllm" or "/vllm/entrypoints/" in argv0
    )


def register() -> None:
    """The `vllm.general_plugins` entry point; vLLM calls it in every process it starts, possibly more than once."""
    if not os.environ.get(ROOT_ENV):
        return
    kvfs_transfer_config(os.environ)  # a bad environment stops the engine now, with its one-line reason
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    global _cleared
    if metrics_dir and not _cleared and _is_serving_process():
        clear_stale_metric_files(metrics_dir)
        _cleared = True
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_kvfs_wired", False):
        return

    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        apply(self)
        return original(self, *args, **kwargs)

    create_engine_config._kvfs_wired = True  # type: ignore[attr-defined]
    EngineArgs.create_engine_config = create_engine_config  # type: ignore[method-assign]
