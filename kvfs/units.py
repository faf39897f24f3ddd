"""Human sizes and durations: `500GiB`, `10G`, `123456`; `30s`, `10m`, `2h`, `7d`."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_POWERS = "kmgtpe"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_size(text: str | int) -> int:
    """Bytes from `123456`, `10G` / `10GB` (powers of 1000) or `500GiB` (powers of 1024)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 123456, 10G, 500GiB)")
    number, prefix, binary, _ = match.groups()
    if binary and not prefix:
        raise ValueError(f"not a size: {text!r} (examples: 123456, 10G, 500GiB)")
    base = 1024 if binary else 1000
    exponent = _POWERS.index(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * base**exponent)


def parse_duration(text: str | float | int) -> float:
    """Seconds from `30s`, `10m`, `2h`, `7d`, `1w`, `250ms`; a bare number is seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 10m, 2h, 7d)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[(unit or "s").lower()]


def format_size(nbytes: int | float) -> str:
    """`1.5 GiB` style, for people."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """`3d 4h`, `12m 5s`, `0.4s`, for people."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(int(seconds), size) if unit != "s" else (int(seconds), 0)
        if count:
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return " ".join(parts)
