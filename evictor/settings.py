"""The evictor's settings: one typed dataclass fed by a config file, `KVFS_*` environment and flags.

Precedence: flags > environment > config file > defaults.  Config-file keys are the snake_case setting names
(the same names as `SETTINGS_SCHEMA`); an unknown key is an error, so a typo in a ConfigMap never passes
silently.  Sizes and durations accept the human forms of `kvfs.units` (`500GiB`, `10m`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kvfs.policy import DEFAULT_POLICY
from kvfs.units import parse_duration, parse_size

ENV_PREFIX = "KVFS_"
MAX_DELETE_BATCH = 1_000_000
WATCH_MODES = ("inotify", "polling", "off")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A bad setting: the message names the setting and where it came from."""


def _default_catalog() -> str:
    # Imported lazily: the catalog package pulls SQLAlchemy, which `kvfs-evictor --help` does not need.
    try:
        from kvfs.catalog import default_catalog_url
    except ImportError:  # the catalog package predates default_catalog_url
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return f"sqlite:///{state}/kvfs/catalog.db"
    return default_catalog_url()


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting: its kind (how text is parsed), its default as people write it, and what it does."""

    name: str
    kind: str  # path | str | size | duration | percent | int | bool | choice | quotas | list
    default: str
    help: str
    choices: tuple[str, ...] = ()


SETTINGS_SCHEMA: dict[str, SettingSpec] = {
    spec.name: spec
    for spec in (
        SettingSpec("root", "path", "/mnt/files-storage", "Root of the KV store (the shared mount)."),
        SettingSpec(
            "catalog",
            "str",
            "sqlite:///~/.local/state/kvfs/catalog.db",
            "Catalog URL: sqlite:///path, a bare path (SQLite) or postgresql+psycopg://user@host/db. "
            "Never put a SQLite catalog on the shared mount.",
        ),
        SettingSpec("config", "path", "", "Config file (YAML, or TOML when it ends in .toml)."),
        SettingSpec(
            "max_bytes",
            "size",
            "",
            "Capacity the watermarks are percentages of. Empty: the filesystem's size by statvfs.",
        ),
        SettingSpec(
            "high_watermark", "percent", "85", "Start evicting when usage exceeds this % of capacity."
        ),
        SettingSpec("low_watermark", "percent", "70", "Evict until usage is at or below this % of capacity."),
        SettingSpec("ttl", "duration", "", "Evict blocks not accessed for this long. Empty: no TTL."),
        SettingSpec(
            "quotas",
            "quotas",
            "",
            "Per-namespace byte limits: a mapping in the config file, `ns=SIZE,ns2=SIZE` in the "
            "environment, repeated --quota ns=SIZE flags.",
        ),
        SettingSpec("retire", "list", "", "Namespaces whose blocks are all evicted (a model taken out)."),
        SettingSpec(
            "min_age",
            "duration",
            "10m",
            "Grace window: nothing written or accessed more recently than this is evicted.",
        ),
        SettingSpec("orphan_grace", "duration", "1h", "Temp files (*.tmp) older than this are deleted."),
        SettingSpec("enforce_interval", "duration", "5s", "How often the leader enforces the limits."),
        SettingSpec(
            "scan_interval",
            "duration",
            "1h",
            "How often a reconciliation scan walks the tree (also once at start-up and on takeover). "
            "0 disables the periodic scan.",
        ),
        SettingSpec(
            "startup_scan",
            "bool",
            "true",
            "Scan the tree when this instance becomes leader, before the first capacity eviction.",
        ),
        SettingSpec(
            "journal_interval",
            "duration",
            "1s",
            "Fallback timer for journal ingest (the journal watcher triggers ingest sooner).",
        ),
        SettingSpec(
            "watch",
            "choice",
            "inotify",
            "Tree and journal watcher: inotify (local filesystems), polling (NFS, Lustre, CephFS: "
            "inotify never sees other hosts' writes) or off (all writers keep journals).",
            WATCH_MODES,
        ),
        SettingSpec(
            "watch_poll_interval",
            "duration",
            "30s",
            "Polling watcher period. Each poll stats every file of the tree: keep it long, or use "
            "watch=off when every writer journals.",
        ),
        SettingSpec("metrics_host", "str", "0.0.0.0", "Address the HTTP server binds."),
        SettingSpec(
            "metrics_port",
            "int",
            "9400",
            "Port of /metrics, /healthz, /readyz and /status. 0: any free port.",
        ),
        SettingSpec("dry_run", "bool", "false", "Plan and log evictions but delete nothing."),
        SettingSpec(
            "log_format",
            "choice",
            "text",
            "Log lines as text or one JSON object each (time, level, logger, msg, and the line's own fields as keys: "
            "event, files, bytes, reason, cause, ...).",
            LOG_FORMATS,
        ),
        SettingSpec("log_level", "choice", "info", "Log level.", LOG_LEVELS),
        SettingSpec(
            "policy",
            "str",
            DEFAULT_POLICY,
            "Eviction policy (kvfs.policy; the default is kvfs.policy.DEFAULT_POLICY).",
        ),
        SettingSpec(
            "delete_batch", "int", "1000", "Files unlinked per batch (journals re-read before each)."
        ),
        SettingSpec(
            "leader_retry",
            "duration",
            "1s",
            "How often a follower tries to become leader (PostgreSQL); bounds takeover after a crash.",
        ),
        SettingSpec(
            "leader_lease",
            "duration",
            "15s",
            "Leader lease (PostgreSQL), renewed by every enforcement pass: a stopped or hung leader is replaced "
            "within leader_lease + leader_retry. Must exceed enforce_interval.",
        ),
        SettingSpec(
            "pause_before_delete",
            "duration",
            "0",
            "Testing and debugging only: sleep this long before each delete batch (after planning).",
        ),
    )
}


def setting_names() -> list[str]:
    """Every setting name: the keys a config file (or a Kubernetes ConfigMap) may hold."""
    return list(SETTINGS_SCHEMA)


@dataclass(frozen=True, slots=True)
class Settings:
    root: Path = Path("/mnt/files-storage")
    catalog: str = ""
    config: Path | None = None
    max_bytes: int | None = None
    high_watermark: float = 85.0
    low_watermark: float = 70.0
    ttl: float | None = None
    quotas: dict[str, int] = field(default_factory=dict)
    retire: tuple[str, ...] = ()
    min_age: float = 600.0
    orphan_grace: float = 3600.0
    enforce_interval: float = 5.0
    scan_interval: float = 3600.0
    startup_scan: bool = True
    journal_interval: float = 1.0
    watch: str = "inotify"
    watch_poll_interval: float = 30.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9400
    dry_run: bool = False
    log_format: str = "text"
    log_level: str = "info"
    policy: str = DEFAULT_POLICY
    delete_batch: int = 1000
    leader_retry: float = 1.0
    leader_lease: float = 15.0
    pause_before_delete: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["retire"] = list(self.retire)
        return out


assert {f.name for f in fields(Settings)} == set(SETTINGS_SCHEMA), "schema and dataclass disagree"


def _parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (true/false)")


def _parse_percent(text: Any) -> float:
    if isinstance(text, bool):
        raise ValueError(f"not a percentage: {text!r}")
    value = float(str(text).strip().rstrip("%")) if not isinstance(text, int | float) else float(text)
    if 0 < value < 1:
        # 0.85 is almost surely meant as 85 %, and taken literally it would evict nearly everything.
        raise ValueError(f"{text!r} is below 1 %: watermarks are percentages (write 85 for 85 %, not 0.85)")
    if not 1 <= value <= 100:  # also true for NaN
        raise ValueError(f"a percentage must be in [1, 100]: {text!r}")
    return value


def _parse_quotas(value: Any) -> dict[str, int]:
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        items = []
        for item in value:
            name, sep, size = str(item).partition("=")
            if not sep or not name.strip():
                raise ValueError(f"a quota is NAMESPACE=SIZE: {item!r}")
            items.append((name.strip(), size.strip()))
    return {str(name): parse_size(size if isinstance(size, int) else str(size)) for name, size in items}


def _parse_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


def _parse_optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
            return None
        return parse(value)

    return inner


def _parse_duration_any(value: Any) -> float:
    return parse_duration(value if isinstance(value, int | float) else str(value))


def _parse_size_any(value: Any) -> int:
    return parse_size(value if isinstance(value, int) else str(value))


def _parse_int(value: Any) -> int:
    """An integer as written: `1000`, "1000"; never a float (1.5 would become 1, .inf overflow)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, str):
        if not value.strip().lstrip("+-").isdigit() or len(value) > 20:
            raise ValueError(f"not an integer: {value[:40]!r}")
        value = int(value)
    return value


def _parse_text(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("empty value")  # `catalog:` with nothing after it is None, not a file named "None"
    return str(value)


def _parse_path(value: Any) -> Path:
    return Path(os.path.expanduser(_parse_text(value)))


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "path": _parse_path,
    "str": _parse_text,
    "size": _parse_size_any,
    "duration": _parse_duration_any,
    "percent": _parse_percent,
    "int": _parse_int,
    "bool": _parse_bool,
    "choice": lambda v: str(v).strip().lower(),
    "quotas": _parse_quotas,
    "list": _parse_list,
}
_OPTIONAL = {"max_bytes", "ttl", "config"}


def parse_value(name: str, value: Any, source: str) -> Any:
    """Parse one raw value (text from env/flags, or a YAML/TOML scalar) into the setting's type."""
    spec = SETTINGS_SCHEMA.get(name)
    if spec is None:
        raise SettingsError(f"unknown setting {name!r} in {source} (known: {', '.join(SETTINGS_SCHEMA)})")
    parser = _PARSERS[spec.kind]
    if name in _OPTIONAL:
        parser = _parse_optional(parser)
    try:
        parsed = parser(value)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"setting {name!r} from {source}: {exc}") from None
    if spec.choices and parsed not in spec.choices:
        raise SettingsError(
            f"setting {name!r} from {source}: {value!r} is not one of {', '.join(spec.choices)}"
        )
    return parsed


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping of a YAML or TOML config file (TOML when the name ends in `.toml`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """`KVFS_<NAME>` variables that name a setting (other `KVFS_*` variables belong to other tools)."""
    out = {}
    for name in SETTINGS_SCHEMA:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags; `None` flag values mean "not given"."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    environ = os.environ if environ is None else environ
    env = env_values(environ)
    config_path = config or flags.get("config") or env.get("config")
    merged: dict[str, Any] = {}
    if config_path:
        for name, value in read_config_file(config_path).items():
            merged[name] = parse_value(name, value, f"config file {config_path}")
        merged["config"] = Path(config_path)
    for name, value in env.items():
        merged[name] = parse_value(name, value, f"environment {ENV_PREFIX}{name.upper()}")
    for name, value in flags.items():
        flag = "--quota" if SETTINGS_SCHEMA[name].kind == "quotas" else f"--{name.replace('_', '-')}"
        merged[name] = parse_value(name, value, f"flag {flag}")
    settings = Settings(**merged)
    if not settings.catalog:
        settings = replace(settings, catalog=_default_catalog())
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if settings.low_watermark >= settings.high_watermark:
        raise SettingsError(
            f"low_watermark ({settings.low_watermark}) must be below high_watermark ({settings.high_watermark})"
        )
    for name in ("enforce_interval", "journal_interval", "leader_retry", "leader_lease"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name} must be positive")
    if settings.leader_lease <= settings.enforce_interval:
        raise SettingsError(
            f"leader_lease ({settings.leader_lease:g}s) must exceed enforce_interval "
            f"({settings.enforce_interval:g}s): every enforcement pass renews the lease"
        )
    from kvfs.policy import available_policies

    if settings.policy not in available_policies():
        raise SettingsError(
            f"unknown policy {settings.policy!r} (available: {', '.join(available_policies())})"
        )
    if not 1 <= settings.delete_batch <= MAX_DELETE_BATCH:
        raise SettingsError(f"delete_batch must be 1 to {MAX_DELETE_BATCH}: {settings.delete_batch}")
    if not 0 <= settings.metrics_port <= 65535:
        raise SettingsError(f"metrics_port must be 1 to 65535 (0: any free port): {settings.metrics_port}")
    if settings.watch_poll_interval <= 0:
        raise SettingsError("watch_poll_interval must be positive")
    if settings.ttl is not None and settings.ttl <= 0:
        raise SettingsError("ttl must be positive (leave it empty for no TTL)")
    from kvfs.catalog.engine import parse_catalog_url, redact_url
    from kvfs.catalog.errors import CatalogError

    try:
        parse_catalog_url(settings.catalog)
    except CatalogError as exc:
        raise SettingsError(f"setting 'catalog': {redact_url(str(exc))}") from None


def describe_settings() -> str:
    """The settings table of docs/evictor.md (kept in step by a test)."""
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for spec in SETTINGS_SCHEMA.values():
        default = f"`{spec.default}`" if spec.default else "(none)"
        lines.append(f"| `{spec.name}` | `{ENV_PREFIX}{spec.name.upper()}` | {default} | {spec.help} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - `python -m evictor.settings` prints the schema as JSON
    print(
        json.dumps({k: {"kind": v.kind, "default": v.default} for k, v in SETTINGS_SCHEMA.items()}, indent=2)
    )
