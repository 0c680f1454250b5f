"""Loads gpuzarr's CUDA sources (the package ``gpuzarr.kernels``) and compiles them with NVRTC.

``get_module`` builds one ``cupy.RawModule`` per (source, device), the first time it is asked for;
``compile_ptx`` compiles to PTX without any GPU (tests, and checking a source for an arch).
Nothing here touches CuPy or a GPU at import time.

Quoted includes (``#include "x.cuh"``) are inlined from the kernels directory, each part preceded
by a ``#line`` directive so compiler messages name the real file and line. Inlining (rather than
``-I``) keeps the code CuPy hashes for its on-disk kernel cache equal to what is compiled, so
editing a header recompiles.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from gpuzarr import forksafe
from gpuzarr.errors import GpuzarrError

# Options every compilation gets; NVRTC has no -Wall, so tests fail on any non-empty log instead.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)

# extern "C" entry points of each source.
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "bitshuffle.cu": ("gpz_bitunshuffle_batch", "gpz_byteunshuffle_batch"),
    "scatter.cu": tuple(f"gpz_{kind}_{n}" for kind in ("scatter", "fill") for n in (1, 2, 4, 8, 16)),
}

# Mirrors of scatter_core.cuh: the int64 record describing one chunk's window.
SCATTER_MAX_NDIM = 8
SCATTER_REC_SRC = 0
SCATTER_REC_DST = 1
SCATTER_REC_SHAPE = 2
SCATTER_REC_START = SCATTER_REC_SHAPE + SCATTER_MAX_NDIM
SCATTER_REC_STEP = SCATTER_REC_START + SCATTER_MAX_NDIM
SCATTER_REC_COUNT = SCATTER_REC_STEP + SCATTER_MAX_NDIM
SCATTER_REC_DSTRIDE = SCATTER_REC_COUNT + SCATTER_MAX_NDIM
SCATTER_REC_LEN = SCATTER_REC_DSTRIDE + SCATTER_MAX_NDIM
SCATTER_ITEMSIZES = (1, 2, 4, 8, 16)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*(//.*)?$')
_NAME = re.compile(r"^[A-Za-z0-9_]+\.(cu|cuh)$")


class KernelCompileError(GpuzarrError, RuntimeError):
    """NVRTC rejected one of gpuzarr's CUDA sources; the message carries NVRTC's log."""


def kernels_dir() -> Any:
    """The folder holding the .cu/.cuh files (an importlib.resources Traversable)."""
    try:
        return resources.files("gpuzarr.kernels")
    except ModuleNotFoundError:
        # A source checkout that is not installed: kernels/ sits beside the gpuzarr/ folder.
        checkout = Path(__file__).resolve().parents[2] / "kernels"
        if (checkout / "__init__.py").is_file():
            return checkout
        raise


def kernel_sources() -> list[str]:
    """Names of the compilable sources (``*.cu``), sorted."""
    return sorted(p.name for p in kernels_dir().iterdir() if p.name.endswith(".cu"))


def kernel_source(name: str) -> str:
    """The source ``name`` with its quoted includes inlined, starting with ``#line 1 "name"``."""
    return _expand(name, ())


def _read(name: str) -> str:
    if not _NAME.match(name):
        raise KernelCompileError(f"not a kernel source name: {name!r}")
    path = kernels_dir() / name
    if not path.is_file():
        raise KernelCompileError(f"no kernel source {name!r} in gpuzarr.kernels")
    return path.read_text(encoding="utf-8")


def _expand(name: str, including: tuple[str, ...]) -> str:
    if name in including:
        raise KernelCompileError(f"include cycle: {' -> '.join(including + (name,))}")
    out = [f'#line 1 "{name}"']
    for lineno, line in enumerate(_read(name).splitlines(), start=1):
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
        else:
            out.append(_expand(m.group(1), including + (name,)).rstrip("\n"))
            out.append(f'#line {lineno + 1} "{name}"')
    return "\n".join(out) + "\n"


def compile_ptx(source_name: str, arch: str, options: tuple[str, ...] = NVRTC_OPTIONS) -> tuple[str, str]:
    """Compile ``source_name`` to PTX for ``arch`` (e.g. ``"compute_80"``) with NVRTC; no GPU needed.

    Returns ``(ptx, log)``; raises KernelCompileError, with NVRTC's log, if compilation fails.
    """
    from cupy.cuda import nvrtc

    code = kernel_source(source_name)
    prog = nvrtc.createProgram(code, source_name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *options])
        except nvrtc.NVRTCError as exc:
            log = _clean(nvrtc.getProgramLog(prog))
            raise KernelCompileError(f"NVRTC could not compile {source_name} for {arch}:\n{log}") from exc
        log = _clean(nvrtc.getProgramLog(prog))
        ptx = _clean(nvrtc.getPTX(prog))
    finally:
        nvrtc.destroyProgram(prog)
    return ptx, log


def _clean(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text.rstrip("\x00")


_modules: dict[tuple[str, int, tuple[str, ...]], Any] = {}
_modules_lock = forksafe.Lock()


def get_module(source_name: str, device_id: int | None = None, name_expressions: tuple[str, ...] = ()) -> Any:
    """The compiled ``cupy.RawModule`` of ``source_name`` for a device (default: the current one).

    Compiled once per (source, device, name_expressions) for the life of the process.
    """
    import cupy

    if device_id is None:
        device_id = cupy.cuda.runtime.getDevice()
    key = (source_name, int(device_id), tuple(name_expressions))
    module = _modules.get(key)
    if module is not None:
        return module
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            code = kernel_source(source_name)
            with cupy.cuda.Device(key[1]):
                module = cupy.RawModule(
                    code=code, options=NVRTC_OPTIONS, name_expressions=key[2] or None
                )
                module.compile()
            _modules[key] = module
    return module


def get_function(source_name: str, entry: str, device_id: int | None = None) -> Any:
    """One ``extern "C"`` entry point (a ``cupy.RawKernel``-like function) of a compiled source."""
    return get_module(source_name, device_id).get_function(entry)
