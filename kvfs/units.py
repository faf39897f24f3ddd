"""Human sizes and durations: `500GiB`, `10G`, `123456`; `30s`, `10m`, `2h`, `7d`.

Both are bounded, so an absurd value is a one-line error where it is given, never an overflow later in a thread
(a timer of 99999999 days, a 400-digit byte count): sizes are at most MAX_SIZE (4 EiB), durations finite and at
most MAX_DURATION (10 years).  A bare number is bytes, or seconds.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_POWERS = "kmgtpe"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_SIZE = 1 << 62  # 4 EiB: beyond any filesystem, and far from int64 overflow in sums
MAX_DURATION = 10 * 365 * 86400.0  # 10 years: beyond any timer or TTL anyone means


def _check_size(value: float | int, text: object) -> int:
    if not value <= MAX_SIZE:  # also true for NaN
        raise ValueError(f"size too large: {str(text)[:40]!r} (at most 4EiB)")
    return int(value)


def _check_duration(value: float, text: object) -> float:
    if not 0 <= value <= MAX_DURATION:  # also true for NaN and infinities
        raise ValueError(f"duration out of range: {str(text)[:40]!r} (0 to 10 years, e.g. 30s, 10m, 2h, 7d)")
    return value


def parse_size(text: str | int) -> int:
    """Bytes from `123456`, `10G` / `10GB` (powers of 1000) or `500GiB` (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return _check_size(text, text)
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r} (examples: 123456, 10G, 500GiB)")
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 123456, 10G, 500GiB)")
    number, prefix, binary, _ = match.groups()
    if binary and not prefix:
        raise ValueError(f"not a size: {text!r} (examples: 123456, 10G, 500GiB)")
    base = 1024 if binary else 1000
    exponent = _POWERS.index(prefix.lower()) + 1 if prefix else 0
    if "." not in number:  # exact for integers (a float would round 2**62 + 1)
        return _check_size(int(number) * base**exponent, text)
    return _check_size(float(number) * base**exponent, text)


def parse_duration(text: str | float | int) -> float:
    """Seconds from `30s`, `10m`, `2h`, `7d`, `1w`, `250ms`; a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return _check_duration(float(text), text)
    if not isinstance(text, str):
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 10m, 2h, 7d)")
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 10m, 2h, 7d)")
    number, unit = match.groups()
    return _check_duration(float(number) * _DURATION_UNITS[(unit or "s").lower()], text)


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
