"""The CPU's placement of a part's chunks in one call: gpuzarr._scatter_host (built from
kernels/scatter_host.cpp by setup.py) walks the scatter records the GPU's kernel takes
(gpu_layout.scatter_records) and copies row by row, called through ctypes, GIL released.

Why: placing pieces one NumPy assignment at a time drops and retakes the GIL per piece. With a
second thread wanting it that is a context switch each (measured ~20 us on the shared 2-core
VMs, 438 a read of 64 windows of v3 uncompressed 128^2 chunks: 2 threads then took 10 ms more
CPU than one, and were slower). Where the library was not built (no C++ compiler at install),
pieces go through NumPy as before: counted in FALLBACKS["unbuilt"] and logged once."""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .kernels import SCATTER_REC_LEN

log = logging.getLogger("gpuzarr")

FALLBACKS: Counter = Counter()  # reads' parts placed through NumPy for want of the library
_LOCK = threading.Lock()
_NAME = "_scatter_host"
VERSION = 2  # gpz_scatter_host_version() of the sources this module calls (kernels/scatter_host.cpp)
_i64 = ctypes.c_int64
_lib: list = []  # [the function, or None where the library is missing]


def _load() -> Any:
    """gpz_scatter_host from the built library, or None (logged once)."""
    folder = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / (_NAME + suffix)
        if path.is_file():
            break
    else:
        log.warning("gpuzarr: %s was not built (no C++ compiler at install?): the CPU places chunks through "
                    "NumPy, slower where another thread reads at once", _NAME)
        return None
    lib = ctypes.CDLL(str(path))
    lib.gpz_scatter_host_rec_len.restype = _i64
    version = getattr(lib, "gpz_scatter_host_version", None)
    if version is None or version() != VERSION or lib.gpz_scatter_host_rec_len() != SCATTER_REC_LEN:
        log.warning("gpuzarr: %s was built from other sources than this gpuzarr's; rebuild it (pip install .): "
                    "the CPU places chunks through NumPy meanwhile", path)  # a stale build beside newer sources
        return None
    fn = lib.gpz_scatter_host
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, _i64, ctypes.c_int, _i64, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _function() -> Any:
    if not _lib:
        with _LOCK:
            if not _lib:
                _lib.append(_load())
    return _lib[0]


def available() -> bool:
    """Whether the library is built and loads; where not, each caller's NumPy path is counted."""
    if _function() is not None:
        return True
    with _LOCK:
        FALLBACKS["unbuilt"] += 1
    return False


def scatter(src: np.ndarray, dst: np.ndarray, records: np.ndarray, ndim: int, itemsize: int, swap: int = 0) -> None:
    """Place `records` (scatter_records' rows, SRC as byte offsets into `src`) from `src` into
    `dst`, both NumPy arrays whose memory the records address (checked by their maker: they come
    from the read's plan, inside the chunk and the output). `swap`: reverse the bytes of each
    unit of this size (2, 4 or 8) on the way, as NumPy's copy between byte orders does."""
    records = np.ascontiguousarray(records, dtype=np.int64)
    if records.shape[0] and _function()(src.ctypes.data, dst.ctypes.data, records.ctypes.data, records.shape[0],
                                        ndim, itemsize, swap):
        raise ValueError(f"the host scatter swaps units of 2, 4 or 8 bytes, not {swap}")
