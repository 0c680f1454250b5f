"""Every call the GPU layer makes into CuPy, checked against the installed package by
introspection (no GPU needed): names, enums, keyword arguments (nvCOMP's C API is checked against
its headers in test_nvcomp_capi.py). The device itself is exercised only by `pytest -m gpu`
(tests/test_gpu.py)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="the cupy package is not installed (GPU extra)")

PACKAGE = Path(__file__).resolve().parents[1] / "gpuzarr"
# modules whose code runs on both devices, written against the namespace `xp`
SHARED = ["placement.py", "codecs/array_to_bytes.py", "codecs/array_to_array.py", "codecs/chain.py",
          "devices/gpu.py", "devices/nvcomp_batch.py", "pipeline.py"]


GPU_ONLY = {"cuda"}  # CupyEngine's runtime calls: checked in test_cupy_runtime_calls_exist


def _xp_names() -> set[str]:
    names = set()
    for rel in SHARED:
        names |= set(re.findall(r"\bxp\.([A-Za-z_][A-Za-z0-9_]*)", (PACKAGE / rel).read_text()))
    return names - GPU_ONLY


def test_shared_code_uses_namespace_functions():
    assert {"transpose", "ascontiguousarray", "empty"} <= _xp_names(), "the scan found the shared calls"


@pytest.mark.parametrize("name", sorted(_xp_names()))
def test_every_namespace_function_exists_in_cupy(name):
    assert hasattr(np, name), f"numpy.{name} missing"
    assert hasattr(cupy, name), f"cupy.{name} is called by shared code but does not exist in CuPy {cupy.__version__}"
    np_obj, cp_obj = getattr(np, name), getattr(cupy, name)
    if callable(np_obj) and not isinstance(np_obj, type):
        try:
            np_params = list(inspect.signature(np_obj).parameters)
            cp_params = list(inspect.signature(cp_obj).parameters)
        except (TypeError, ValueError):
            return  # a builtin without a signature on one side: existence is what can be checked
        # positional parameters the shared code relies on keep their order in CuPy (concatenate's
        # and stack's first is named differently, tup/arrays, and only ever passed by position)
        assert cp_params[:2] == np_params[:2] or (name in ("concatenate", "stack")
                                                  and cp_params[1:2] == np_params[1:2]), \
            f"{name}: numpy {np_params} vs cupy {cp_params}"


def test_array_methods_used_on_device_arrays_exist():
    for method in ("view", "reshape", "strides", "flags", "dtype", "set", "shape", "nbytes"):
        assert hasattr(cupy.ndarray, method), method


def test_cupy_runtime_calls_exist():
    cuda = cupy.cuda
    for attr in ("alloc_pinned_memory", "Event", "Device", "Stream", "get_current_stream"):
        assert hasattr(cuda, attr), attr
    assert hasattr(cuda.runtime, "getDevice") and hasattr(cuda.runtime, "getDeviceCount")
    for attr in ("record", "synchronize"):
        assert hasattr(cuda.Event, attr), attr
    assert "stream" in (cupy.ndarray.set.__doc__ or ""), "ndarray.set takes a stream"
    assert hasattr(cupy, "RawModule") and hasattr(cupy.RawModule, "get_function")
    assert hasattr(cupy.cuda.Stream, "__enter__"), "kernels launch on the stream entered as a context"


def _documented_kernel_call() -> inspect.Signature:
    """RawKernel.__call__'s documented signature, e.g. `(self, grid, block, args, *, shared_mem=0)`."""
    doc = cupy.RawKernel.__call__.__doc__
    line = next(ln for ln in doc.splitlines() if ln.startswith("__call__(") and "\\*" in ln)
    names = [p.strip() for p in line[len("__call__("):-1].split(",")]
    params, kw_only = [], False
    for name in names[1:]:
        if name == "\\*":
            kw_only = True
            continue
        name, _, default = name.partition("=")
        kind = inspect.Parameter.KEYWORD_ONLY if kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(name, kind, default=int(default) if default else inspect.Parameter.empty))
    return inspect.Signature(params)


def _kernel_params(entry: str) -> int:
    """Number of parameters of an extern "C" entry point in kernels/*.cu (macros expanded by NVRTC)."""
    from gpuzarr.devices.kernels import compile_ptx

    for source in ("scatter.cu", "bitshuffle.cu"):
        ptx, _ = compile_ptx(source, "compute_80")
        match = re.search(rf"\.entry {entry}\(([^)]*)\)", ptx)
        if match:
            return match.group(1).count(".param")
    raise AssertionError(f"no entry {entry}")


_C_SIZES = {"gpz_i64": 8, "gpz_u64": 8, "int": 4, "long long": 8, "unsigned long long": 8}


def _declared_params() -> dict[str, list]:
    """extern "C" entry points of kernels/*.cu → per parameter: 'ptr' or its size in bytes."""
    from gpuzarr.devices.kernels import kernel_source

    out = {}
    for source in ("scatter.cu", "bitshuffle.cu"):
        text = kernel_source(source).replace("\\\n", " ")
        for name, params in re.findall(r'extern "C" __global__ void ([\w#]+)\(([^)]*)\)', text):
            kinds = []
            for p in params.split(","):
                p = " ".join(p.replace("__restrict__", "").replace("const", "").split())
                kinds.append("ptr" if "*" in p else _C_SIZES[p.rsplit(" ", 1)[0]])
            if name == "NAME":  # GPZ_..._ENTRY(NAME, ...) macros: every invocation names one
                for entry in re.findall(r"^GPZ_\w+_ENTRY\((\w+),", text, flags=re.M):
                    out[entry] = kinds
                continue
            for n in (1, 2, 4, 8, 16) if "##N" in name else (None,):
                out[name.replace("##N", str(n))] = kinds
    return out


def test_engine_kernel_launches_match_cupy_and_the_kernels(monkeypatch):
    """Drive CupyEngine's launches with a recorder bound to RawKernel's documented signature
    and to each kernel's parameter count from its PTX (catches e.g. a `stream=` keyword that
    RawKernel does not take)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from gpuzarr.devices import gpu
    from gpuzarr.devices.kernels import SCATTER_REC_COUNT, SCATTER_REC_LEN

    sig = _documented_kernel_call()
    calls = []

    def fake_get_function(source, entry, device_id=None):
        def launch(*args, **kwargs):
            calls.append((entry, sig.bind(*args, **kwargs).arguments["args"]))
        return launch

    monkeypatch.setattr(gpu, "get_function", fake_get_function)
    engine = gpu.CupyEngine.__new__(gpu.CupyEngine)
    engine.xp = SimpleNamespace(asarray=np.asarray,
                                cuda=SimpleNamespace(get_current_stream=lambda: nullcontext(SimpleNamespace(ptr=0))))
    engine.device_id = 0
    records = np.zeros((3, SCATTER_REC_LEN), np.int64)
    records[:, SCATTER_REC_COUNT] = 5  # a window length, so launch sizes are positive
    work = np.zeros(64, np.uint8)
    engine.scatter(work, work, records, 4, 1)
    engine.fill(work, records, bytes(16), 8, 1)
    table = {k: np.zeros(2, np.int64) for k in ("src", "dst", "size", "typesize")}
    engine.unshuffle(1, work, table)
    engine.unshuffle(2, work, table)
    engine.copy(work, work, {"src": np.zeros(2, np.int64), "dst": np.zeros(2, np.int64), "size": np.ones(2, np.int64)})
    assert len(calls) == 5
    declared = _declared_params()
    for entry, args in calls:
        assert len(args) == _kernel_params(entry), entry
        # device arrays where the kernel takes pointers, NumPy scalars of the declared width elsewhere
        # (CuPy passes a scalar by its dtype: a wrong width shifts every later parameter)
        for i, (arg, kind) in enumerate(zip(args, declared[entry])):
            if kind == "ptr":
                assert isinstance(arg, np.ndarray), (entry, i, type(arg))
            else:
                assert isinstance(arg, np.generic) and arg.dtype.itemsize == kind, (entry, i, arg)
