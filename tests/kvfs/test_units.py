"""Units: sizes and durations parse the documented forms, reject the rest, and format for people."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfs.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123456", 123456),
        ("0", 0),
        ("10G", 10 * 1000**3),
        ("10GB", 10 * 1000**3),
        ("10g", 10 * 1000**3),
        ("500GiB", 500 * 1024**3),
        ("1.5KiB", 1536),
        ("2M", 2_000_000),
        ("1TiB", 1024**4),
        (" 7 MiB ", 7 * 1024**2),
        ("12B", 12),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "10X", "-5", "5 GiBs", "iB", "1.2.3G", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_parse_size_rejects_negative_int() -> None:
    with pytest.raises(ValueError):
        parse_size(-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("45", 45.0),
        ("1.5h", 5400.0),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "10x", "-1s", "s", "1y", "ten minutes"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=2**50))
@settings(max_examples=200)
def test_plain_integers_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["K", "M", "G", "T"]), st.booleans())
@settings(max_examples=200)
def test_prefixed_sizes(n: int, prefix: str, binary: bool) -> None:
    base = 1024 if binary else 1000
    power = "KMGT".index(prefix) + 1
    assert parse_size(f"{n}{prefix}{'i' if binary else ''}B") == n * base**power


def test_format_size_and_duration() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(500 * 1024**3) == "500.0 GiB"
    assert format_duration(0.4) == "0.4s"
    assert format_duration(725) == "12m 5s"
    assert format_duration(3 * 86400 + 4 * 3600 + 5) == "3d 4h"
