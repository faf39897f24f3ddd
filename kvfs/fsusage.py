"""The filesystem's size and use (statvfs), as the evictor's watermarks and `kvfs du` both measure it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FsUsage:
    size: int  # f_blocks x f_frsize
    used: int  # (f_blocks - f_bfree) x f_frsize: everything on the volume, kvfs's or not, reserved blocks included
    available: int  # f_bavail x f_frsize: what an unprivileged writer (the engines) can still write

    @property
    def ratio(self) -> float:
        return self.used / self.size if self.size else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size,
            "used_bytes": self.used,
            "available_bytes": self.available,
            "use_ratio": round(self.ratio, 6),
        }


def fs_usage(path: str | os.PathLike[str]) -> FsUsage:
    """statvfs of `path` (raises OSError)."""
    st = os.statvfs(path)
    return FsUsage(
        size=st.f_blocks * st.f_frsize,
        used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        available=st.f_bavail * st.f_frsize,
    )


def allocated_bytes(st: os.stat_result) -> int:
    """The bytes a file really holds: its allocated blocks, capped by its length.

    Sizes that drive eviction come from here, never from a writer's claim or `st_size` alone: a sparse file
    (or a length set with truncate) claims terabytes it does not occupy, and counting them would make a
    capacity pass delete other namespaces' blocks.  Blocks past the length (preallocation) do not count either.
    """
    return min(st.st_size, st.st_blocks * 512)
