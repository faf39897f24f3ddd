"""The connector's own settings, read from vLLM's ``kv_connector_extra_config`` (no vLLM import).

Every key is optional except ``root``; unknown ``kvfs_*`` keys are rejected so a typo is not silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvfs.units import parse_duration, parse_size

DEFAULT_ROOT = "/mnt/files-storage"
# One pinned staging buffer per I/O thread: the cap bounds pinned memory whatever the thread count.
DEFAULT_MAX_STAGING = 4 << 30
DEFAULT_STORE_BUDGET_S = 10.0
DEFAULT_LOOKUP_TTL_S = 2.0
# vLLM's engine loop steps without pause while a request waits for its KV; each idle step then waits this long
# for kvfs's transfers or lookups instead, releasing the GIL the I/O threads need.
DEFAULT_IDLE_WAIT_S = 0.002


class ConfigError(ValueError):
    """A wrong connector setting; the message names the key."""


def default_io_threads() -> int:
    """Sized to the host: one thread per CPU the process may run on, at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 4
    return max(2, min(32, cpus))


@dataclass(frozen=True)
class KvfsConnectorConfig:
    root: str = DEFAULT_ROOT
    io_threads: int = 0  # 0 = default_io_threads()
    max_staging_bytes: int = DEFAULT_MAX_STAGING
    store_budget_s: float = DEFAULT_STORE_BUDGET_S
    lookup_ttl_s: float = DEFAULT_LOOKUP_TTL_S
    durability: str = "none"
    direct_io: bool | None = False  # None = "auto": O_DIRECT wherever a probe of the root passes
    journal: bool = True
    model_revision: str | None = None
    file_mode: int = 0o660
    gpu_checksums: bool = True
    cuda_graphs: bool = True
    idle_wait_s: float = DEFAULT_IDLE_WAIT_S

    @property
    def threads(self) -> int:
        return self.io_threads or default_io_threads()

    def use_direct_io(self) -> bool:
        """Whether block I/O uses O_DIRECT: the setting, or for "auto" a probe of the root (cached per filesystem;
        a refusal is logged and counted)."""
        if self.direct_io is None:
            from kvfs.blockfile import probe_o_direct

            os.makedirs(self.root, exist_ok=True)
            return probe_o_direct(self.root)
        return self.direct_io

    @classmethod
    def from_extra(
        cls, extra: Mapping[str, Any], *, direct_io_default: bool | None = False
    ) -> KvfsConnectorConfig:
        """Parse the ``kvfs_*`` keys (``root`` may also be spelled ``kvfs_root``).  `direct_io_default` is the
        form's default for ``kvfs_direct_io`` (None: "auto")."""
        known = {
            "kvfs_root",
            "kvfs_io_threads",
            "kvfs_max_staging",
            "kvfs_store_budget",
            "kvfs_lookup_ttl",
            "kvfs_durability",
            "kvfs_direct_io",
            "kvfs_journal",
            "kvfs_model_revision",
            "kvfs_file_mode",
            "kvfs_gpu_checksums",
            "kvfs_cuda_graphs",
            "kvfs_idle_wait",
        }
        unknown = sorted(k for k in extra if k.startswith("kvfs_") and k not in known)
        if unknown:
            raise ConfigError(f"unknown kvfs connector setting(s) {unknown}; known: {sorted(known)}")
        try:
            root = str(extra.get("kvfs_root", extra.get("root", DEFAULT_ROOT)))
            threads = int(extra.get("kvfs_io_threads", 0))
            staging = extra.get("kvfs_max_staging", DEFAULT_MAX_STAGING)
            staging_b = parse_size(staging) if isinstance(staging, str) else int(staging)
            budget = extra.get("kvfs_store_budget", DEFAULT_STORE_BUDGET_S)
            budget_s = parse_duration(budget) if isinstance(budget, str) else float(budget)
            ttl = extra.get("kvfs_lookup_ttl", DEFAULT_LOOKUP_TTL_S)
            ttl_s = parse_duration(ttl) if isinstance(ttl, str) else float(ttl)
            idle = extra.get("kvfs_idle_wait", DEFAULT_IDLE_WAIT_S)
            idle_s = parse_duration(idle) if isinstance(idle, str) else float(idle)
            mode = extra.get("kvfs_file_mode", 0o660)
            file_mode = int(mode, 8) if isinstance(mode, str) else int(mode)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad kvfs connector setting: {exc}") from exc
        durability = str(extra.get("kvfs_durability", "none"))
        if durability not in ("none", "data", "data+dir"):
            raise ConfigError(f"kvfs_durability must be none, data or data+dir, not {durability!r}")
        if threads < 0:
            raise ConfigError(f"kvfs_io_threads must be >= 0 (0 = sized to the host), not {threads}")
        if staging_b <= 0 or budget_s < 0 or ttl_s < 0 or not 0 <= idle_s <= 1:
            raise ConfigError(
                "kvfs_max_staging must be > 0; kvfs_store_budget and kvfs_lookup_ttl >= 0; "
                "kvfs_idle_wait between 0 and 1s"
            )
        if not os.path.isabs(root):
            raise ConfigError(f"kvfs_root must be an absolute path, not {root!r}")
        revision = extra.get("kvfs_model_revision")
        return cls(
            root=root,
            io_threads=threads,
            max_staging_bytes=staging_b,
            store_budget_s=budget_s,
            lookup_ttl_s=ttl_s,
            durability=durability,
            direct_io=_direct_io(extra.get("kvfs_direct_io", direct_io_default)),
            journal=_flag(extra, "kvfs_journal", True),
            model_revision=None if revision is None else str(revision),
            file_mode=file_mode,
            gpu_checksums=_flag(extra, "kvfs_gpu_checksums", True),
            cuda_graphs=_flag(extra, "kvfs_cuda_graphs", True),
            idle_wait_s=idle_s,
        )


def _direct_io(value: Any) -> bool | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return _flag({"kvfs_direct_io": value}, "kvfs_direct_io", False)


def _flag(extra: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean setting: JSON true/false, or the strings "true"/"false" (bool("false") would be True)."""
    value = extra.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(
        f"{key} must be true or false{' or auto' if key == 'kvfs_direct_io' else ''}, not {value!r}"
    )
