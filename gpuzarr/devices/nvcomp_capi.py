"""nvCOMP's low-level batched C API, from the `libnvcomp.so` the nvidia-libnvcomp wheel ships,
through ctypes: the calls that take device arrays of pointers and sizes and give back per-chunk
decoded sizes and statuses (the Python `Codec` API does not expose the actual sizes), and the
batched CRC32 that verifies checksums on the device.

Each prototype is written twice, as ctypes types and as the C declaration it mirrors; a test
compiles those C declarations against the wheel's own headers (gcc, no GPU), so a signature
that drifts fails CI rather than a user's first read. The queries (alignments, temporary
memory) answer without a GPU.

Streams: every call takes the caller's stream as it is. In this API a stream of 0 is CUDA's
legacy default stream (CuPy's null stream, whose `ptr` is 0) and 2 the per-thread one; only
the Python `Codec(cuda_stream=...)` reads a missing stream as "create my own", and gpuzarr does
not use it. The C API keeps no handles, so nothing of nvCOMP's needs releasing at exit."""

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


# nvcompDecompressBackend_t (shared_types.h): the CUDA decoders. The default lets nvCOMP pick a
# GPU's hardware decode engine where it has one, of which lz4.h says its statuses report success
# on corrupt input, and which fails asynchronously past 4 MiB buffers: a corrupt chunk must fail
# on every GPU, so gpuzarr asks for the CUDA implementation on all of them
BACKEND_CUDA = 2


class DecompressOpts(ctypes.Structure):
    """Any algorithm's nvcompBatched*DecompressOpts_t: each starts with its
    nvcompDecompressBackend_t `backend`, then fields and reserved bytes to 64, zero for their
    defaults (passed by value, in memory, whatever the fields)."""

    _fields_ = [("backend", ctypes.c_int), ("rest", ctypes.c_char * (OPTS_BYTES - 4))]


class CRC32Spec(ctypes.Structure):
    """nvcompCRC32Spec_t (crc32.h): a CRC model in the Rocksoft parameters (poly unreflected)."""

    _fields_ = [("poly", ctypes.c_uint32), ("init", ctypes.c_uint32), ("ref_in", ctypes.c_bool),
                ("ref_out", ctypes.c_bool), ("xorout", ctypes.c_uint32), ("reserved", ctypes.c_char * 16)]


class CRC32KernelConf(ctypes.Structure):
    """nvcompCRC32KernelConf_t: which kernel computes the CRCs; filled by GetHeuristicConf."""

    _fields_ = [("kernel_kind", ctypes.c_int), ("bytes_per_read", ctypes.c_int32),
                ("blocks_per_msg", ctypes.c_int32), ("reserved", ctypes.c_char * 20)]


class CRC32Opts(ctypes.Structure):
    """nvcompBatchedCRC32Opts_t, passed by value."""

    _fields_ = [("spec", CRC32Spec), ("kernel_conf", CRC32KernelConf), ("reserved", ctypes.c_char * 64)]


# The models gpuzarr verifies, as crc32.h's presets spell them (nvcompCRC32_C, "CRC-32/ISCSI", for
# the crc32c codec; nvcompCRC32, "CRC-32/PKZIP", for gzip's trailer, RFC 1952 §8): a test compiles
# the header and compares, another checks these parameters against the crc32c package and zlib.
CRC32_MODELS = {"crc32c": (0x1EDC6F41, 0xFFFFFFFF, True, True, 0xFFFFFFFF),
                "crc32": (0x04C11DB7, 0xFFFFFFFF, True, True, 0xFFFFFFFF)}
CRC32_ONLY_SEGMENT = 0  # nvcompCRC32OnlySegment: each message is whole


def crc32_opts(model: str) -> CRC32Opts:
    """Options for `model`, kernel configuration still zero (ask GetHeuristicConf for it)."""
    opts = CRC32Opts()
    opts.spec.poly, opts.spec.init, opts.spec.ref_in, opts.spec.ref_out, opts.spec.xorout = CRC32_MODELS[model]
    return opts


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
# nvcompBatchedCRC32<suffix> -> parameters, likewise
CRC32_PROTOTYPES: dict[str, list[tuple[str, Any]]] = {
    "Async": [("const void *const *", _P), ("const size_t *", _P), ("size_t", _SIZE), ("uint32_t *", _P),
              ("nvcompBatchedCRC32Opts_t", CRC32Opts), ("nvcompCRC32SegmentKind_t", ctypes.c_int),
              ("nvcompStatus_t *", _P), ("cudaStream_t", _P)],
    "GetHeuristicConf": [("const size_t *", _P), ("size_t", _SIZE), ("nvcompCRC32KernelConf_t *", _P),
                         ("size_t", _SIZE), ("cudaStream_t", _P)],
}


def library_path() -> str:
    package = importlib.import_module("nvidia.libnvcomp")
    return os.path.join(list(package.__path__)[0], "lib64", "libnvcomp.so.6")


@functools.lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """Every function of PROTOTYPES for every algorithm, and of CRC32_PROTOTYPES (as algorithm
    "CRC32"), typed: `functions[(algorithm, suffix)]`. Raises OSError/AttributeError where the
    library or a symbol is missing."""
    lib = ctypes.CDLL(library_path())
    return {(algorithm, suffix): typed(lib, f"nvcompBatched{algorithm}{suffix}", params)
            for algorithm, prototypes in _all_prototypes() for suffix, params in prototypes.items()}


def typed(lib: ctypes.CDLL, name: str, params: list[tuple[str, Any]]) -> Any:
    """`lib`'s function `name`, typed by its prototype (tests bind stand-ins compiled against the
    headers the same way)."""
    fn = getattr(lib, name)
    fn.argtypes = [ctype for _, ctype in params]
    fn.restype = ctypes.c_int  # nvcompStatus_t
    return fn


def _all_prototypes() -> list[tuple[str, dict]]:
    return [(algorithm, PROTOTYPES) for algorithm in ALGORITHMS] + [("CRC32", CRC32_PROTOTYPES)]


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
    for algorithm, prototypes in _all_prototypes():
        opts = f"nvcompBatched{algorithm}DecompressOpts_t"
        for suffix, params in prototypes.items():
            args = ", ".join(c.format(opts=opts) for c, _ in params)
            lines.append(f"typedef nvcompStatus_t gpz_{algorithm}_{suffix}_t({args});")
    return "\n".join(lines)
