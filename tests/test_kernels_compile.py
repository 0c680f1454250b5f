"""Every CUDA source of gpuzarr.kernels compiles with NVRTC, warning-free, for the archs we target.

NVRTC runs on the CPU, so these tests need no GPU; they skip (with the reason) only when CuPy or
the NVRTC library cannot be loaded at all.
"""

from __future__ import annotations

import re

import pytest

from gpuzarr.devices import kernels

ARCHS = ("compute_80", "compute_90")

# The extern "C" entry points each source must define: the contract with the Python side.
EXPECTED_ENTRIES = {
    "bitshuffle.cu": {"gpz_bitunshuffle_batch", "gpz_byteunshuffle_batch"},
    "scatter.cu": {f"gpz_{kind}_{n}" for kind in ("scatter", "fill") for n in (1, 2, 4, 8, 16)},
}


def _nvrtc():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"NVRTC is not loadable here ({type(exc).__name__}: {exc})")
    return nvrtc


def test_every_source_is_known():
    sources = kernels.kernel_sources()
    assert sources == sorted(EXPECTED_ENTRIES), sources
    assert {k: set(v) for k, v in kernels.ENTRY_POINTS.items()} == EXPECTED_ENTRIES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(EXPECTED_ENTRIES))
def test_compiles_without_warnings(source, arch):
    _nvrtc()
    ptx, log = kernels.compile_ptx(source, arch)
    assert log.strip() == "", f"NVRTC log for {source} ({arch}) is not empty:\n{log}"
    assert f".target sm_{arch.split('_')[1]}" in ptx
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
    assert entries == EXPECTED_ENTRIES[source], entries


def _entries(ptx: str) -> dict[str, str]:
    """Each .entry of a PTX module with its body (up to the next .entry)."""
    parts = re.split(r"\.entry\s+(\w+)\s*\(", ptx)
    return dict(zip(parts[1::2], parts[2::2]))


WORD16 = r"\.v(4\.u32|2\.u64|4\.b32|2\.b64)"  # a 16-byte vector access


@pytest.mark.parametrize("arch", ARCHS)
def test_scatter_ptx_has_the_efficient_paths(arch):
    """What the CPU tests cannot see: each scatter/fill entry keeps its window in shared memory
    behind barriers, moves 16-byte vectors, and has a 32-bit index path beside the 64-bit one."""
    _nvrtc()
    ptx, _ = kernels.compile_ptx("scatter.cu", arch)
    for name, body in _entries(ptx).items():
        assert re.search(r"\.shared \.align 16 .*gpz_window|\.shared \.align 16 \.b8 \w+\[\d+\]", body), name
        assert "bar.sync" in body, name
        assert re.search(r"st\.global" + WORD16, body), name
        if name.startswith("gpz_scatter_"):
            assert re.search(r"ld\.global(\.nc)?" + WORD16, body), name
        assert re.search(r"(div|rem)\.[su]32", body) and re.search(r"(div|rem)\.[su]64", body), name


@pytest.mark.parametrize("arch", ARCHS)
def test_unshuffle_ptx_goes_through_a_shared_tile(arch):
    _nvrtc()
    ptx, _ = kernels.compile_ptx("bitshuffle.cu", arch)
    for name, body in _entries(ptx).items():
        assert re.search(r"\.shared \.align 16 \.b8 \w+tile\[4096\]", body), name
        assert "bar.sync" in body and "st.shared" in body and "ld.shared" in body, name
        assert re.search(r"st\.global" + WORD16, body), name  # the tile leaves in 16-byte words


def test_includes_are_inlined_with_line_directives():
    code = kernels.kernel_source("bitshuffle.cu")
    assert code.startswith('#line 1 "bitshuffle.cu"\n')
    assert '#line 1 "bitshuffle_core.cuh"' in code
    assert "#include" not in code
    # after the header, numbering resumes on the line following the #include
    lines = kernels._read("bitshuffle.cu").splitlines()
    include_line = next(i for i, l in enumerate(lines, 1) if l.startswith("#include"))
    assert f'#line {include_line + 1} "bitshuffle.cu"' in code


def test_compile_error_reports_file_and_line(tmp_path, monkeypatch):
    """A broken header is reported by NVRTC at its own name and line, through the #line directives."""
    _nvrtc()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "broken_core.cuh").write_text("// line 1\n// line 2\nthis is not C++;\n")
    (tmp_path / "broken.cu").write_text('// comment\n#include "broken_core.cuh"\nextern "C" __global__ void k() {}\n')
    monkeypatch.setattr(kernels, "kernels_dir", lambda: tmp_path)
    with pytest.raises(kernels.KernelCompileError) as info:
        kernels.compile_ptx("broken.cu", "compute_80")
    assert "broken_core.cuh(3)" in str(info.value)


def test_warnings_reach_the_log(tmp_path, monkeypatch):
    """The empty-log assertion above means something: NVRTC does report warnings in the log."""
    _nvrtc()
    (tmp_path / "warn.cu").write_text('extern "C" __global__ void k(int* p) { int unused; p[0] = 1; }\n')
    monkeypatch.setattr(kernels, "kernels_dir", lambda: tmp_path)
    ptx, log = kernels.compile_ptx("warn.cu", "compute_80")
    assert "warning" in log and "warn.cu(1)" in log


def test_include_cycle_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\n')
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\n')
    monkeypatch.setattr(kernels, "kernels_dir", lambda: tmp_path)
    with pytest.raises(kernels.KernelCompileError, match="include cycle"):
        kernels.kernel_source("a.cuh")


def test_no_gpu_work_at_import():
    """Importing the loader does not import CuPy (so no CUDA call can happen at import)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, gpuzarr.devices.kernels; print('cupy' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("source", ["bitshuffle.cu", "scatter.cu"])
def test_every_kernel_includes_the_common_header(source):
    """gpz_common.cuh (the __host__/__device__ shims and fixed-width types) is inlined once."""
    code = kernels.kernel_source(source)
    assert code.count('#line 1 "gpz_common.cuh"') == 1
