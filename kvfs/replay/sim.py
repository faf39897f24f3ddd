"""The replay's shared rules and result type."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field


def leading_hits(request: Sequence[int], cached: Container[int]) -> int:
    """Prefix semantics: the number of leading blocks of `request` that are cached."""
    n = 0
    for h in request:
        if h not in cached:
            break
        n += 1
    return n


@dataclass(slots=True)
class SimResult:
    """Block hits of one simulated run."""

    hit_blocks: int = 0
    total_blocks: int = 0
    evicted: int = 0
    # Each request's leading hits, in order: set beside an engine's own per-request hits (tools.e2e's trace
    # phase), a gap is located, not only measured.
    per_request: list[int] = field(default_factory=list)

    def count(self, hits: int, blocks: int) -> None:
        self.hit_blocks += hits
        self.total_blocks += blocks
        self.per_request.append(hits)

    @property
    def hit_ratio(self) -> float:
        return self.hit_blocks / self.total_blocks if self.total_blocks else 0.0
