"""What an eviction pass enforces (`Limits`), and where every caller gets them from (`limits_from_settings`).

Quotas and retired namespaces are evictor settings (config file, `KVFS_QUOTAS` / `KVFS_RETIRE`, flags): the
evictor and `kvfs gc` read the same settings (`kvfs gc --config`, `KVFS_CONFIG`), so both enforce the same
ones.  Capacity is the caller's: the evictor turns its watermarks into a target, `kvfs gc` takes `--max-bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol


class EvictReason(StrEnum):
    CAPACITY = "capacity"
    TTL = "ttl"
    QUOTA = "quota"
    RETIRED = "retired"
    TEMP_FILE = "orphan"  # a stale temp file (`*.tmp`): the label keeps its published value
    CORRUPT = "corrupt"


# Reasons that evict some blocks to keep the rest: the policy's history hears of these only.
KEEPING = frozenset({EvictReason.CAPACITY, EvictReason.QUOTA})


@dataclass(frozen=True)
class Limits:
    """What one pass enforces.  `None` switches a limit off.

    With `namespace` set, every limit applies to that namespace alone (`max_bytes` caps its usage).
    `min_age` protects blocks whose last access or creation is that recent, whatever the other limits say.
    `temp_grace`: stale temp files older than this are removed (None: left alone).
    """

    max_bytes: int | None = None
    ttl: float | None = None
    quotas: Mapping[str, int] = field(default_factory=dict)
    retire: Sequence[str] = ()
    temp_grace: float | None = None
    min_age: float = 0.0
    namespace: str | None = None


class LimitSettings(Protocol):
    """The settings a pass's limits come from (`evictor.settings.Settings`)."""

    ttl: float | None
    quotas: Mapping[str, int]
    retire: Sequence[str]
    orphan_grace: float | None
    min_age: float


def limits_from_settings(settings: LimitSettings, *, max_bytes: int | None) -> Limits:
    """The one place a pass's limits are assembled from settings.  The evictor takes them whole; `kvfs gc`
    replaces TTL, min-age and temp-file grace by its own flags (`dataclasses.replace`) and keeps the quotas and
    retired namespaces (`limits_for_command`), so both enforce the same ones."""
    return Limits(
        max_bytes=max_bytes,
        ttl=settings.ttl,
        quotas=dict(settings.quotas),
        retire=tuple(dict.fromkeys(settings.retire)),
        temp_grace=settings.orphan_grace,
        min_age=settings.min_age,
    )


def limits_for_command(
    settings: LimitSettings,
    *,
    max_bytes: int | None,
    ttl: float | None,
    min_age: float,
    temp_grace: float | None,
    retire: Sequence[str] = (),
    namespace: str | None = None,
) -> Limits:
    """`kvfs gc`'s limits: the settings' quotas and retired namespaces (plus `retire`), everything else from the
    command's own flags (None switches a limit off)."""
    return replace(
        limits_from_settings(settings, max_bytes=max_bytes),
        ttl=ttl,
        retire=tuple(dict.fromkeys([*settings.retire, *retire])),
        temp_grace=temp_grace,
        min_age=min_age,
        namespace=namespace,
    )
