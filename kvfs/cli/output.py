"""Output for people (aligned tables, sizes, ages) and for machines (`--json`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import click

from kvfs.units import format_duration, format_size


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """A plain aligned table; `right` lists the columns (numbers) aligned to the right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def size(nbytes: int | float) -> str:
    return format_size(nbytes)


def age(timestamp: float | None, now: float | None = None) -> str:
    """`3d 4h ago` for a past epoch time; `-` when unknown."""
    if timestamp is None or not math.isfinite(timestamp) or timestamp <= 0:
        return "-"
    delta = (time.time() if now is None else now) - timestamp
    return "just now" if delta < 1 else f"{format_duration(delta)} ago"
