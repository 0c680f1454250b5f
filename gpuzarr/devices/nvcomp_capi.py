"""nvCOMP's low-level batched C API, from the `libnvcomp.so` the nvidia-libnvcomp wheel ships,
through ctypes: the calls that take device arrays of pointers and sizes and give back per-chunk
decoded sizes and statuses (the Python `Codec` API does not expose the actual sizes).

Each prototype is written twice, as ctypes types and as the C declaration it mirrors; a test
compiles those C declarations against the wheel's own headers (gcc, no GPU), so a signature
that drifts fails CI rather than a user's first read. The queries (alignments, temporary
memory) answer without a GPU."""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
from typing import Any

ALGORITHMS = ("Zstd", "LZ4", "Snappy", "Deflate", "Gzip")
OPTS_BYTES = 64  # every nvcompBatched*DecompressOpts_t (checked against the headers)


class Alignments(ctypes.Structure):
    """nvcompAlignmentRequirements_t: minimum alignment of each input, output and temp buffer."""

    _fields_ = [("input", ctypes.c_size_t), ("output", ctypes.c_size_t), ("temp", ctypes.c_size_t)]


class DecompressOpts(ctypes.Structure):
    """Any algorithm's nvcompBatched*DecompressOpts_t, all zero: its defaults (an int first,
    then fields and reserved bytes to 64; passed by value, in memory, whatever the fields)."""

    _fields_ = [("first", ctypes.c_int), ("rest", ctypes.c_char * (OPTS_BYTES - 4))]


_P, _SIZE = ctypes.c_void_p, ctypes.c_size_t
# function suffix -> [(C type, ctypes type) per parameter]; the return type is nvcompStatus_t
PROTOTYPES: dict[str, list[tuple[str, Any]]] = {
    "DecompressGetRequiredAlignments": [("{opts}", DecompressOpts), ("nvcompAlignmentRequirements_t *", _P)],
    "DecompressGetTempSize": [("size_t", _SIZE), ("size_t", _SIZE), ("{opts}", DecompressOpts), ("size_t *", _P),
                              ("size_t", _SIZE), ("cudaStream_t", _P)],
    "DecompressAsync": [("const void *const *", _P), ("const size_t *", _P), ("const size_t *", _P), ("size_t *", _P),
                        ("size_t", _SIZE), ("void *const", _P), ("size_t", _SIZE), ("void *const *", _P),
                        ("{opts}", DecompressOpts), ("nvcompStatus_t *", _P), ("cudaStream_t", _P)],
}


def library_path() -> str:
    package = importlib.import_module("nvidia.libnvcomp")
    return os.path.join(list(package.__path__)[0], "lib64", "libnvcomp.so.6")


@functools.lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """Every function of PROTOTYPES for every algorithm, typed: `functions[(algorithm, suffix)]`.
    Raises OSError/AttributeError where the library or a symbol is missing."""
    lib = ctypes.CDLL(library_path())
    functions = {}
    for algorithm in ALGORITHMS:
        for suffix, params in PROTOTYPES.items():
            fn = getattr(lib, f"nvcompBatched{algorithm}{suffix}")
            fn.argtypes = [ctype for _, ctype in params]
            fn.restype = ctypes.c_int  # nvcompStatus_t
            functions[(algorithm, suffix)] = fn
    return functions


def required_alignments(algorithm: str) -> Alignments:
    """nvCOMP's own answer (default options), which needs no GPU."""
    out = Alignments()
    status = load()[(algorithm, "DecompressGetRequiredAlignments")](DecompressOpts(), ctypes.byref(out))
    if status != 0:
        raise RuntimeError(f"nvcompBatched{algorithm}DecompressGetRequiredAlignments returned status {status}")
    return out


def c_declarations() -> str:
    """The prototypes as C declarations (typedefs of function types), for the header check."""
    lines = []
    for algorithm in ALGORITHMS:
        opts = f"nvcompBatched{algorithm}DecompressOpts_t"
        for suffix, params in PROTOTYPES.items():
            args = ", ".join(c.format(opts=opts) for c, _ in params)
            lines.append(f"typedef nvcompStatus_t gpz_{algorithm}_{suffix}_t({args});")
    return "\n".join(lines)
