"""CUDA graphs of an I/O thread's repeated GPU phases.

A load or store of one file queues a handful of copies and kernels (payload copy, block ids, the hash, the gather
or scatter).  Issued one by one from Python, each costs tens of microseconds with the GIL held, and with 16 or
more I/O threads the GIL is what they queue for.  A phase of a given shape (the same buffers, sizes, block count
and KV group) is the same every time, so it is captured once and then replayed with one call.  What varies
between files lives in the thread's pinned buffers (payload bytes, block ids), which the graph's copies read when
they run.

A shape runs eagerly the first time (Triton compiles, lazy initialisation happens outside a capture), is captured
the second time, and replays from then on.  If a capture fails, the cache turns itself off and the phase runs
eagerly: graphs are a speed-up, never a requirement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch

from connector import metrics

log = logging.getLogger("kvfs.connector")

# Graphs kept per cache (per staging slot): shapes beyond it run eagerly.  A worker sees a few shapes (full
# chunks of each KV group, and the partial loads of a chunk's first blocks).
MAX_GRAPHS = 32


class GraphCache:
    """Captured phases of one CUDA stream, by shape key.  Not thread-safe: one per I/O thread's slot."""

    def __init__(self, *, enabled: bool = True, limit: int = MAX_GRAPHS) -> None:
        self.enabled = enabled
        self.limit = limit
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._seen: set[Hashable] = set()
        # Objects a graph's addresses come from (a KV group's copier): kept alive as long as the graph is.
        self._owners: dict[Hashable, object] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable | None, enqueue: Callable[[], None], *, owner: object = None) -> bool:
        """Queue `enqueue`'s work on the current stream: replayed from a graph when this shape was captured,
        else captured now if it ran once before, else run eagerly (always, for the key None).

        Returns whether the call was steady state: False for a shape's first run (Triton compiles its kernels,
        seconds on a fresh host) and for its capture, one-time costs that a caller timing the phase (the store
        bandwidth estimate) must not take for the phase's cost."""
        if key is None:
            enqueue()
            return True
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return True
        if not self.enabled or key not in self._seen or len(self._graphs) >= self.limit:
            seen = key in self._seen
            self._seen.add(key)
            enqueue()
            return seen
        try:
            graph = torch.cuda.CUDAGraph()
            # thread_local: the other I/O threads and the engine keep issuing work while this one captures.
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                enqueue()
            finally:
                graph.capture_end()
        except Exception as exc:  # noqa: BLE001 - a failed capture only costs the speed-up
            self.enabled = False
            metrics.GRAPH_CAPTURE_FAILED.inc()
            log.warning(
                "kvfs: CUDA graph capture failed (%s); this I/O thread issues its copies eagerly", exc
            )
            enqueue()
            return False
        self._graphs[key] = graph
        self._owners[key] = owner
        graph.replay()
        return False
