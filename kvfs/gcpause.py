"""Pausing Python's cyclic garbage collector around bulk work that allocates many acyclic objects.

Planning a gc pass and decoding a journal batch each build ~10^5 small objects (candidates, victims, records)
that hold no reference cycles: reference counting frees them, and the cyclic collector's passes over them find
nothing while costing a quarter or more of the time (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, restoring it only if it was enabled (nesting-safe)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
