"""Pinning host memory that kvfs did not allocate (a block file mapped from the page cache) for direct DMA.

`cudaHostRegister` pins a range page by page; called through torch it would hold the GIL for the whole call,
and with 16 I/O threads registering 32 MiB files that serialises them.  The CUDA runtime that torch already
loaded is called through ctypes instead, which releases the GIL during the call.  No vLLM import.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger("kvfs.connector")

# cudaHostRegisterReadOnly: the mapping is PROT_READ; without the flag the driver asks for write access and fails.
_READ_ONLY = 0x08


class HostPinner:
    """cudaHostRegister / cudaHostUnregister of the CUDA runtime loaded in this process."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._register = lib.cudaHostRegister
        self._register.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        self._register.restype = ctypes.c_int
        self._unregister = lib.cudaHostUnregister
        self._unregister.argtypes = [ctypes.c_void_p]
        self._unregister.restype = ctypes.c_int
        self._get_last_error = lib.cudaGetLastError
        self._get_last_error.restype = ctypes.c_int

    def register(self, ptr: int, nbytes: int) -> int:
        """Pin [ptr, ptr + nbytes) for DMA; the CUDA error code (0: pinned)."""
        rc = int(self._register(ptr, nbytes, _READ_ONLY))
        if rc:
            self._get_last_error()  # clear the sticky-until-read error so later CUDA calls do not report it
        return rc

    def unregister(self, ptr: int) -> int:
        rc = int(self._unregister(ptr))
        if rc:
            self._get_last_error()
        return rc


_lock = threading.Lock()
_pinner: HostPinner | None = None
_looked = False


def host_pinner() -> HostPinner | None:
    """The process's pinner, or None where no CUDA runtime is loaded (CPU-only torch) or it lacks the calls."""
    global _pinner, _looked
    with _lock:
        if not _looked:
            _looked = True
            _pinner = _load()
        return _pinner


def _load() -> HostPinner | None:
    for path in _loaded_cudart_paths():
        try:
            return HostPinner(ctypes.CDLL(path))  # the library already loaded: dlopen returns the same copy
        except (OSError, AttributeError) as exc:
            log.debug("kvfs: %s has no usable cudaHostRegister: %s", path, exc)
    return None


def _loaded_cudart_paths() -> list[str]:
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libcudart.so") and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths
