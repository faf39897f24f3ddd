"""click parameter types for sizes and durations, with one-line errors."""

from __future__ import annotations

from typing import Any

import click

from kvfs.units import parse_duration, parse_size


class SizeType(click.ParamType):
    """`500GiB`, `10G`, `123456` → bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(click.ParamType):
    """`30s`, `10m`, `2h`, `7d` → seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()
DURATION = DurationType()


class PolicyOption(click.Option):
    """An option whose help ends with the registered eviction policies (listed when help is shown, so a policy
    module added to kvfs.policy appears without touching the commands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "NAME")
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from kvfs.policy import available_policies

        names = ", ".join(available_policies())
        base = (self.help or "").rstrip()
        if "Policies:" not in base:
            text, sep, bracket = base.partition("  [")  # before a trailing "  [env var: ...]"
            self.help = f"{text} Policies: {names}.{sep}{bracket}"
        return super().get_help_record(ctx)
