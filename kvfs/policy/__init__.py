"""Eviction policies by name.

Every module in this package that defines an `EvictionPolicy` subclass registers it with `@register_policy`;
`get_policy(name)` imports the package's modules on first use, so a new policy module needs no edit here.
"""

from __future__ import annotations

import importlib
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
DEFAULT_POLICY = "lru"

POLICIES: dict[str, type[EvictionPolicy]] = {}
_discovered = False


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
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
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
        raise UnknownPolicyError(
            f"unknown eviction policy {name!r} (available: {', '.join(available_policies())})"
        ) from None
