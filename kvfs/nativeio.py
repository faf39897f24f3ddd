"""The compiled block-file path (`kvfs._blockio`, kvfs/_blockio.c): whether this process has it, and its calls.

A store or load of one block file through it is one call that releases the GIL once (system calls and payload
hash included) instead of ~6 system calls and as many hash calls, each a GIL hand-off with Python between them:
with 16 connector I/O threads on small files those hand-offs, not the bytes, bounded kvfs (docs/benchmarks.md,
issue 23 item 4).  kvfs/blockfile.py uses it for every store and for loads into a caller's buffer (buffered or
O_DIRECT), and keeps its Python path for loads that return bytes (`kvfs verify`); both paths produce and accept
the same files (tests/kvfs/test_nativeio.py).

It is used only when the extension was built (setup.py: optional, so an install without a C compiler still
works), its hash binds to the `xxhash` package's own XXH3_64bits, and kvfs/checksum.py's self-test at import
agrees with it.  `KVFS_NATIVE_IO=0` turns it off (comparisons, or a suspected fault).  `STATUS` says which path
runs and why; `kvfs_block_io_native` exports it (1 or 0).
"""

from __future__ import annotations

import ctypes
import logging
import os
from types import ModuleType
from typing import Final

from kvfs import metrics

log = logging.getLogger(__name__)

# Outcomes of store() / load(): kvfs/_blockio.c's enums.
STORED: Final = 0
EXISTS: Final = 1
OPEN_FAILED: Final = 2
FAILED: Final = 3
NOREPLACE_REFUSED: Final = 4

LOAD_OK: Final = 0
LOAD_MISSING: Final = 1
LOAD_IO_ERROR: Final = 2
LOAD_NOT_REGULAR: Final = 3


def _bind() -> tuple[ModuleType | None, str]:
    if os.environ.get("KVFS_NATIVE_IO", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "off (KVFS_NATIVE_IO=0)"
    try:
        from kvfs import _blockio  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"not built ({exc}): the Python path runs"
    try:
        import xxhash._xxhash as xxhash_ext

        address = ctypes.cast(ctypes.CDLL(xxhash_ext.__file__).XXH3_64bits, ctypes.c_void_p).value
    except (ImportError, OSError, AttributeError) as exc:
        return None, f"the xxhash package exports no XXH3_64bits ({exc}): the Python path runs"
    _blockio.bind_xxh3(address)
    return _blockio, "on"


MODULE, STATUS = _bind()
metrics.BLOCK_IO_NATIVE.set(1 if MODULE is not None else 0)
if MODULE is None:
    log.info("kvfs: the compiled block-file path is %s", STATUS)


def disable(why: str) -> None:
    """Turn the compiled path off for this process (kvfs/checksum.py's self-test, when it disagrees)."""
    global MODULE, STATUS
    MODULE, STATUS = None, f"off ({why})"
    metrics.BLOCK_IO_NATIVE.set(0)
    log.warning("kvfs: the compiled block-file path is off: %s", why)
