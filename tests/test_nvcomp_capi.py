"""gpuzarr.devices.nvcomp_capi against the nvCOMP wheel itself, with no GPU: the C declarations
behind the ctypes prototypes compile against the wheel's headers (a drifted signature fails
here), the ctypes types follow those declarations, and the facts gpuzarr relies on (buffer
alignments, the temporary-memory query) are nvCOMP's own answers through ctypes."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

from gpuzarr.devices import nvcomp_capi as capi
from gpuzarr.devices.gpu_layout import ALIGN

pytest.importorskip("nvidia.libnvcomp", reason="the nvCOMP wheel is not installed (the [test] extra installs it on "
                                               "Linux x86_64)")


def _compile(source: str, tmp_path) -> subprocess.CompletedProcess:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the header check with")
    include = os.path.join(os.path.dirname(capi.library_path()), "..", "include")
    path = tmp_path / "check.c"
    path.write_text(source)
    return subprocess.run(["gcc", "-std=gnu11", "-fsyntax-only", "-I", include, str(path)],
                          capture_output=True, text=True)


def _header_check(declarations: str) -> str:
    lines = ["#include <stddef.h>", "#include <nvcomp.h>", declarations]
    for algorithm in capi.ALGORITHMS:
        for suffix in capi.PROTOTYPES:
            name = f"nvcompBatched{algorithm}{suffix}"
            lines.append(f"_Static_assert(__builtin_types_compatible_p(__typeof__({name}), "
                         f"gpz_{algorithm}_{suffix}_t), \"{name}\");")
        lines.append(f"_Static_assert(sizeof(nvcompBatched{algorithm}DecompressOpts_t) == {capi.OPTS_BYTES}, "
                     f"\"{algorithm} options\");")
    lines.append(f"_Static_assert(sizeof(nvcompAlignmentRequirements_t) == {ctypes.sizeof(capi.Alignments)}, "
                 f"\"alignments\");")
    lines.append("_Static_assert(sizeof(nvcompStatus_t) == sizeof(int), \"status\");")
    return "\n".join(lines) + "\n"


def test_the_prototypes_are_the_headers_declarations(tmp_path):
    result = _compile(_header_check(capi.c_declarations()), tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_header_check_catches_a_drifted_prototype(tmp_path):
    """The check can fail: one parameter changed (a size where the header has a pointer)."""
    drifted = capi.c_declarations().replace("gpz_Zstd_DecompressAsync_t(const void *const *, const size_t *,",
                                            "gpz_Zstd_DecompressAsync_t(const void *const *, size_t,", 1)
    assert drifted != capi.c_declarations()
    result = _compile(_header_check(drifted), tmp_path)
    assert result.returncode != 0 and "nvcompBatchedZstdDecompressAsync" in result.stderr


def test_the_ctypes_types_follow_the_c_declarations():
    assert ctypes.sizeof(capi.DecompressOpts) == capi.OPTS_BYTES
    assert ctypes.sizeof(capi.Alignments) == 3 * ctypes.sizeof(ctypes.c_size_t)
    for params in capi.PROTOTYPES.values():
        for c_type, ctype in params:
            if c_type == "{opts}":
                assert ctype is capi.DecompressOpts
            elif "*" in c_type or c_type == "cudaStream_t":
                assert ctype is ctypes.c_void_p, c_type
            else:
                assert (c_type, ctype) == ("size_t", ctypes.c_size_t)


def test_every_symbol_is_exported_by_the_wheels_library():
    functions = capi.load()
    assert len(functions) == len(capi.ALGORITHMS) * len(capi.PROTOTYPES)


# nvCOMP 6.0's answers, measured through this very call; a new answer must be looked at
ALIGNMENTS = {"Zstd": (1, 1, 8), "LZ4": (1, 1, 1), "Snappy": (1, 1, 1), "Deflate": (4, 1, 1), "Gzip": (1, 1, 1)}


@pytest.mark.parametrize("algorithm", capi.ALGORITHMS)
def test_nvcomp_states_the_alignments_gpuzarr_stages_for(algorithm):
    got = capi.required_alignments(algorithm)
    assert (got.input, got.output, got.temp) == ALIGNMENTS[algorithm]
    assert ALIGN % got.input == 0 and ALIGN % got.output == 0  # staging and work rows satisfy them


def test_the_temporary_memory_query_answers_without_a_gpu():
    temp = ctypes.c_size_t()
    fn = capi.load()[("Zstd", "DecompressGetTempSize")]
    status = fn(64, 1 << 17, capi.DecompressOpts(), ctypes.byref(temp), 64 << 17, None)
    assert status == 0 and temp.value > 0
