"""Eviction policies by name.

Every module in this package that defines an `EvictionPolicy` subclass registers it with `@register_policy`;
`get_policy(name)` imports the package's modules on first use, so a new policy module needs no edit here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from kvfs.policy.base import Candidate, EvictionPolicy

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Candidate",
    "EvictionPolicy",
    "UnknownPolicyError",
    "available_policies",
    "get_policy",
    "register_policy",
]

# The policy used when none is named (the CLI's `--policy`, the evictor's `policy` setting).
# Four orders on one tier (the two shares, S3-FIFO's sweep, 2Q, `prefix`), each pass ordered by the one that hit
# most on miniature simulations of the tier (kvfs/policy/adaptive.py): no single classic order is best on every
# workload and capacity, and `prefix` alone was below 0.995x the best other policy in 43 of the replay suite's
# 78 cells, `adaptive` in 10 (docs/policy.md).  `prefix`, `2q`, `slru`, `s3fifo` and `lru` stay selectable.
DEFAULT_POLICY = "adaptive"

POLICIES: dict[str, type[EvictionPolicy]] = {}
# Modules of this package that failed to import: name → error (see _discover).
BROKEN_MODULES: dict[str, str] = {}
_discovered = False
log = logging.getLogger("kvfs.policy")


class UnknownPolicyError(ValueError):
    """A policy name that no module registered."""


def register_policy(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
    """Class decorator: make `cls` available as `get_policy(cls.name)`."""
    existing = POLICIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"two eviction policies are named {cls.name!r}: {existing!r} and {cls!r}")
    POLICIES[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of the package once.  A module that fails to import is logged and skipped, so a
    broken optional policy never takes the others (and `kvfs gc`) down with it."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # noqa: BLE001 - reported, and named in get_policy's error
            BROKEN_MODULES[info.name] = f"{type(exc).__name__}: {exc}"
            log.warning("eviction policy module %s.%s failed to import: %s", __name__, info.name, exc)
    _discovered = True


def available_policies() -> list[str]:
    _discover()
    return sorted(POLICIES)


def get_policy(name: str | None = None) -> EvictionPolicy:
    """A fresh instance of the named policy (the default when `name` is None)."""
    _discover()
    name = name or DEFAULT_POLICY
    try:
        return POLICIES[name]()
    except KeyError:
        broken = "".join(f"; module {m} failed to import: {e}" for m, e in BROKEN_MODULES.items())
        raise UnknownPolicyError(
            f"unknown eviction policy {name!r} (available: {', '.join(available_policies())}){broken}"
        ) from None
