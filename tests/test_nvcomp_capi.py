"""gpuzarr.devices.nvcomp_capi against the nvCOMP wheel itself, with no GPU: the C declarations
behind the ctypes prototypes compile against the wheel's headers (a drifted signature fails
here), the ctypes types follow those declarations, and the facts gpuzarr relies on (buffer
alignments, the temporary-memory query) are nvCOMP's own answers through ctypes."""

from __future__ import annotations

import ctypes
import os
import re
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


# ctypes structures -> the C type each mirrors, field by field
STRUCTS = {capi.CRC32Spec: "nvcompCRC32Spec_t", capi.CRC32KernelConf: "nvcompCRC32KernelConf_t",
           capi.CRC32Opts: "nvcompBatchedCRC32Opts_t", capi.Alignments: "nvcompAlignmentRequirements_t"}


def _layout_asserts(struct, c_name: str) -> list[str]:
    """sizeof and every field's offset and size, as ctypes lays them out, asserted in C."""
    lines = [f"_Static_assert(sizeof({c_name}) == {ctypes.sizeof(struct)}, \"sizeof {c_name}\");"]
    for name, _ in struct._fields_:
        field = getattr(struct, name)
        lines.append(f"_Static_assert(offsetof({c_name}, {name}) == {field.offset} && "
                     f"sizeof((({c_name} *)0)->{name}) == {field.size}, \"{c_name}.{name}\");")
    return lines


def _header_check(declarations: str) -> str:
    lines = ["#include <stddef.h>", "#include <nvcomp.h>", declarations]
    for algorithm, prototypes in capi._all_prototypes():
        for suffix in prototypes:
            name = f"nvcompBatched{algorithm}{suffix}"
            lines.append(f"_Static_assert(__builtin_types_compatible_p(__typeof__({name}), "
                         f"gpz_{algorithm}_{suffix}_t), \"{name}\");")
    for algorithm in capi.ALGORITHMS:
        opts = f"nvcompBatched{algorithm}DecompressOpts_t"
        lines.append(f"_Static_assert(sizeof({opts}) == {capi.OPTS_BYTES}, \"{algorithm} options\");")
        lines.append(f"_Static_assert(offsetof({opts}, backend) == 0 && sizeof((({opts} *)0)->backend) == "
                     f"sizeof(int), \"{algorithm} backend first\");")
    lines.append(f"_Static_assert(NVCOMP_DECOMPRESS_BACKEND_CUDA == {capi.BACKEND_CUDA}, \"CUDA backend\");")
    for struct, c_name in STRUCTS.items():
        lines += _layout_asserts(struct, c_name)
    lines.append("_Static_assert(sizeof(nvcompStatus_t) == sizeof(int), \"status\");")
    lines.append("_Static_assert(sizeof(nvcompCRC32SegmentKind_t) == sizeof(int), \"segment kind\");")
    lines.append("_Static_assert(sizeof(nvcompCRC32KernelKind_t) == sizeof(int), \"kernel kind\");")
    lines.append(f"_Static_assert(nvcompCRC32OnlySegment == {capi.CRC32_ONLY_SEGMENT}, \"only segment\");")
    return "\n".join(lines) + "\n"


def test_the_prototypes_are_the_headers_declarations(tmp_path):
    result = _compile(_header_check(capi.c_declarations()), tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("declared, drifted, function", [
    ("gpz_Zstd_DecompressAsync_t(const void *const *, const size_t *,",  # a size where a pointer is
     "gpz_Zstd_DecompressAsync_t(const void *const *, size_t,", "nvcompBatchedZstdDecompressAsync"),
    ("nvcompBatchedCRC32Opts_t, nvcompCRC32SegmentKind_t,",  # options by pointer, not by value
     "nvcompBatchedCRC32Opts_t *, nvcompCRC32SegmentKind_t,", "nvcompBatchedCRC32Async"),
])
def test_the_header_check_catches_a_drifted_prototype(tmp_path, declared, drifted, function):
    """The check can fail: one parameter changed."""
    source = capi.c_declarations().replace(declared, drifted, 1)
    assert source != capi.c_declarations()
    result = _compile(_header_check(source), tmp_path)
    assert result.returncode != 0 and function in result.stderr


def test_the_header_check_catches_a_drifted_structure_layout(tmp_path):
    class Shifted(ctypes.Structure):  # ref_in and ref_out as ints: every later offset moves
        _fields_ = [("poly", ctypes.c_uint32), ("init", ctypes.c_uint32), ("ref_in", ctypes.c_int),
                    ("ref_out", ctypes.c_int), ("xorout", ctypes.c_uint32), ("reserved", ctypes.c_char * 16)]

    source = _header_check(capi.c_declarations()) + "\n".join(_layout_asserts(Shifted, "nvcompCRC32Spec_t")) + "\n"
    result = _compile(source, tmp_path)
    assert result.returncode != 0 and "nvcompCRC32Spec_t.ref_out" in result.stderr


def test_the_ctypes_types_follow_the_c_declarations():
    assert ctypes.sizeof(capi.DecompressOpts) == capi.OPTS_BYTES
    assert ctypes.sizeof(capi.Alignments) == 3 * ctypes.sizeof(ctypes.c_size_t)
    by_value = {"{opts}": capi.DecompressOpts, "nvcompBatchedCRC32Opts_t": capi.CRC32Opts,
                "nvcompCRC32SegmentKind_t": ctypes.c_int}
    for _, prototypes in capi._all_prototypes():
        for params in prototypes.values():
            for c_type, ctype in params:
                if c_type in by_value:
                    assert ctype is by_value[c_type], c_type
                elif "*" in c_type or c_type == "cudaStream_t":
                    assert ctype is ctypes.c_void_p, c_type
                else:
                    assert (c_type, ctype) == ("size_t", ctypes.c_size_t)


def test_the_crc_models_are_the_headers_presets(tmp_path):
    """CRC32_MODELS against crc32.h's own preset values (static const structs, so printed by a
    compiled program rather than asserted at compile time): nvcompCRC32_C and nvcompCRC32."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the header check with")
    include = os.path.join(os.path.dirname(capi.library_path()), "..", "include")
    source = tmp_path / "presets.c"
    source.write_text("#include <stdio.h>\n#include <nvcomp.h>\n"
                      "static void show(const char *n, nvcompCRC32Spec_t s) {\n"
                      "  printf(\"%s %u %u %d %d %u\\n\", n, s.poly, s.init, s.ref_in, s.ref_out, s.xorout);\n}\n"
                      "int main(void) { show(\"crc32c\", nvcompCRC32_C); show(\"crc32\", nvcompCRC32); return 0; }\n")
    binary = tmp_path / "presets"
    built = subprocess.run(["gcc", "-std=gnu11", "-I", include, str(source), "-o", str(binary)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    printed = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split("\n")
    presets = {name: tuple(int(v) for v in values)
               for name, *values in (line.split() for line in printed if line)}
    assert presets == {name: tuple(int(v) for v in model) for name, model in capi.CRC32_MODELS.items()}
    opts = capi.crc32_opts("crc32c")
    assert (opts.spec.poly, opts.spec.init, opts.spec.ref_in, opts.spec.ref_out, opts.spec.xorout) == \
        capi.CRC32_MODELS["crc32c"]
    reserved = capi.CRC32Spec.reserved.offset  # from here on: reserved bytes and the kernel conf, zero
    assert bytes(opts)[reserved:] == bytes(ctypes.sizeof(opts) - reserved)


def test_every_symbol_is_exported_by_the_wheels_library():
    functions = capi.load()
    assert len(functions) == len(capi.ALGORITHMS) * len(capi.PROTOTYPES) + len(capi.CRC32_PROTOTYPES)


# nvCOMP 6.0's answers, measured through this very call; a new answer must be looked at
ALIGNMENTS = {"Zstd": (1, 1, 8), "LZ4": (1, 1, 1), "Snappy": (1, 1, 1), "Deflate": (4, 1, 1), "Gzip": (1, 1, 1)}


@pytest.mark.parametrize("algorithm", capi.ALGORITHMS)
def test_nvcomp_states_the_alignments_gpuzarr_stages_for(algorithm):
    got = capi.required_alignments(algorithm)
    assert (got.input, got.output, got.temp) == ALIGNMENTS[algorithm]
    assert ALIGN % got.input == 0 and ALIGN % got.output == 0  # fetch's chunk starts and temp slots satisfy them


def _query(algorithm: str, backend: int) -> tuple[int, int, int]:
    got = capi.Alignments()
    status = capi.load()[(algorithm, "DecompressGetRequiredAlignments")](capi.DecompressOpts(backend=backend),
                                                                         ctypes.byref(got))
    assert status == 0
    return got.input, got.output, got.temp


def test_gpu_layout_follows_nvcomps_answer_for_the_options_it_decodes_with():
    """gpu_layout reads streams in place by decode_alignments(): nvCOMP's answer for the CUDA
    backend gpuzarr decodes with (nvcomp_batch), the same as the default options' above."""
    from gpuzarr.devices.gpu_layout import decode_alignments
    from gpuzarr.devices.nvcomp_batch import NVCOMP_ALGORITHMS

    asked = {kind: _query(name, capi.BACKEND_CUDA)[:2] for kind, name in NVCOMP_ALGORITHMS.items()}
    assert decode_alignments() == asked
    for kind, name in NVCOMP_ALGORITHMS.items():
        assert _query(name, capi.BACKEND_CUDA) == ALIGNMENTS[name]
    # what issue 10 rests on: zstd, LZ4 and Snappy streams are read at any byte, deflate's at a multiple of 4,
    # and every output is written at any byte (blosc blocks at their offsets in a chunk, unaligned rows)
    assert decode_alignments() == {"zstd": (1, 1), "lz4": (1, 1), "snappy": (1, 1), "deflate": (4, 1)}


def _header(name: str) -> str:
    include = os.path.join(os.path.dirname(capi.library_path()), "..", "include", "nvcomp")
    with open(os.path.join(include, name)) as f:  # doc comments as running text: no line breaks, no " * "
        return " ".join(" ".join(re.sub(r"^\s*\*(?!/)", "", line) for line in f).split())


def _doc_of(text: str, function: str) -> str:
    """The doc comment right before `function`'s declaration."""
    end = text.index(f"nvcompStatus_t {function}(")
    return text[text.rindex("/**", 0, end):end]


HEADERS = {"Zstd": "zstd.h", "LZ4": "lz4.h", "Deflate": "deflate.h", "Snappy": "snappy.h"}


@pytest.mark.parametrize("algorithm", sorted(HEADERS))
def test_the_headers_make_the_query_the_contract_of_decompression_buffers(algorithm):
    """Which alignment binds the buffers gpuzarr hands nvCOMP: DecompressAsync's own parameters name
    the query's `input` member for each compressed chunk and its `output` member for each output."""
    text = _header(HEADERS[algorithm])
    doc = _doc_of(text, f"nvcompBatched{algorithm}DecompressAsync")
    query = f"`nvcompBatched{algorithm}DecompressGetRequiredAlignments`"
    inputs = doc[doc.index("@param[in] device_compressed_chunk_ptrs"):
                 doc.index("@param[in] device_compressed_chunk_bytes")]
    assert "Each chunk must be aligned to the value in the `input` member" in inputs and query in inputs
    outputs = doc[doc.index("@param[out] device_uncompressed_chunk_ptrs"):doc.index("@param[in] decompress_opts")]
    assert "aligned to the value in the `output` member" in outputs and query in outputs


@pytest.mark.parametrize("algorithm", sorted(HEADERS) + ["Gzip"])
def test_the_higher_header_constants_bound_input_output_and_temp_together(algorithm):
    """nvcomp<Alg>RequiredDecompressionAlignment (Zstd 8, LZ4 4, Deflate 4, Gzip 8) is not the
    inputs' requirement: its doc calls it "the most restrictive" over input, output AND temporary
    buffers (zstd's 8 is its temp buffer's), and where it exceeds every query field (LZ4, Gzip) it
    is a looser bound than the query, which DecompressAsync names (above)."""
    text = _header(HEADERS.get(algorithm, "gzip.h"))
    name = f"nvcomp{algorithm}RequiredDecompressionAlignment"
    at = text.index(f"static const size_t {name} = ")
    doc = text[text.rindex("/**", 0, at):at]
    assert ("The most restrictive of the minimum alignment requirements for void-type CUDA memory buffers used "
            "for input, output, or temporary memory, passed to decompression functions") in doc
    assert "typed memory buffers must still be aligned to their type's size" in doc  # the pointer and size arrays
    constant = int(text[at:].split("=", 1)[1].split(";", 1)[0])
    assert constant >= max(_query(algorithm, capi.BACKEND_CUDA))


def test_the_crc32_inputs_have_no_alignment_requirement():
    """crc32c messages (whole stored chunks) are checked where fetch put them."""
    doc = _doc_of(_header("crc32.h"), "nvcompBatchedCRC32Async")
    inputs = doc[doc.index("@param[in] device_input_chunk_ptrs"):doc.index("@param[in] device_input_chunk_bytes")]
    assert "The data chunks do not have any alignment requirements." in inputs


def test_the_temporary_memory_query_answers_without_a_gpu():
    temp = ctypes.c_size_t()
    fn = capi.load()[("Zstd", "DecompressGetTempSize")]
    status = fn(64, 1 << 17, capi.DecompressOpts(), ctypes.byref(temp), 64 << 17, None)
    assert status == 0 and temp.value > 0


def test_the_crc_kernel_configuration_needs_a_gpu():
    """nvcompBatchedCRC32GetHeuristicConf asks the device (its answer depends on the GPU model):
    without one it answers nvcompErrorCudaError, so gpuzarr asks it on the GPU, per batch."""
    from gpuzarr.devices.gpu import usable_gpu

    if usable_gpu()[0]:
        pytest.skip("a GPU is usable here: the query answers (exercised by the -m gpu tests)")
    conf = capi.CRC32KernelConf()
    status = capi.load()[("CRC32", "GetHeuristicConf")](None, 64, ctypes.byref(conf), 1 << 17, None)
    assert status == 1000  # nvcompErrorCudaError (shared_types.h)
