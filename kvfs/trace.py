"""The request-trace format `kvfs replay` reads (Mooncake JSONL): one JSON object a line, `timestamp` (ms),
`input_length` and `output_length` (tokens) and `hash_ids`, the request's prefix blocks of 512 tokens: equal ids at
the same position are the same KV block.  The generators of such traces are a tool (`tools/tracegen.py`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace; `hash_ids` are its prefix blocks in order."""

    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "timestamp": self.timestamp_ms,
                "input_length": self.input_length,
                "output_length": self.output_length,
                "hash_ids": list(self.hash_ids),
            }
        )


def write_trace(requests: Iterable[TraceRequest], out: IO[str]) -> int:
    n = 0
    for req in requests:
        out.write(req.to_json() + "\n")
        n += 1
    return n


def iter_trace_lines(lines: Iterable[str]) -> Iterator[TraceRequest]:
    """Parse Mooncake JSONL; blank lines are skipped, a malformed line raises ValueError naming its number."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
                raise TypeError("hash_ids must be a list of integers")
            yield TraceRequest(
                int(obj.get("timestamp", 0)),
                int(obj.get("input_length", len(ids) * BLOCK_TOKENS)),
                int(obj.get("output_length", 0)),
                tuple(ids),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {lineno}: not a Mooncake trace record ({exc})") from None


def read_trace(path: str | Path) -> list[TraceRequest]:
    """The trace's requests; ValueError naming the file and line for a malformed or non-UTF-8 line."""
    with open(path, "rb") as fh:
        try:
            return list(iter_trace_lines(_utf8_lines(fh)))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _utf8_lines(fh: Iterable[bytes]) -> Iterator[str]:
    for lineno, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"line {lineno}: not UTF-8 text (a binary file?)") from None
