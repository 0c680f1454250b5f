"""Defects of a second paper review of the GPU path (issue 9), each pinned by a check that needs no
GPU: the lagged check of nvCOMP's results must not wait for the whole stream, a failed read
must leave nothing queued behind it, only data errors of nvCOMP are CorruptDataError, and a GPU
out of memory anywhere in a batch is a DeviceMemoryError naming the Settings that bound it."""

from __future__ import annotations

import inspect
import threading
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import zstandard

import gpuzarr
from gpu_standin import StandinEngine
from gpuzarr.devices import nvcomp_capi
from gpuzarr.devices.gpu import GpuDevice
from gpuzarr.devices.gpu_layout import build_layout
from gpuzarr.devices.nvcomp_batch import Decoded
from gpuzarr.errors import CorruptDataError, DeviceMemoryError
from test_gpu_review import LE, ZSTD, _bare_engine, _write_v3, _zstd_array_path, _zstd_batch


class _DeviceArray(np.ndarray):
    """A NumPy array standing for a CuPy one: `get` as CuPy's (stream, order, out, blocking),
    counting blocking copies (CuPy's blocking get synchronises the whole stream)."""

    blocking_gets = 0
    outs: list = []

    def get(self, stream=None, order="C", out=None, blocking=True):
        if blocking:
            _DeviceArray.blocking_gets += 1
        if out is None:
            return np.array(self)
        _DeviceArray.outs.append(out)
        out[...] = np.asarray(self)
        return out


class _Event:
    made: list = []

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = self.waited = 0
        self.device = _Device.current()
        _Event.made.append(self)

    def record(self, stream=None):
        self.recorded += 1

    def synchronize(self):  # CUDA: an event never recorded is complete
        self.waited += 1


class _Stream:
    def __init__(self, fail=None):
        self.ptr, self.syncs, self.fail = 0, 0, fail

    def synchronize(self):
        self.syncs += 1
        if self.fail:
            raise self.fail


def _device_namespace(stream: _Stream) -> ModuleType:
    xp = ModuleType("cupy_like")
    xp.__dict__.update(vars(np))
    xp.stack = lambda arrays: np.stack(arrays).view(_DeviceArray)
    pinned = []

    def alloc_pinned_memory(nbytes):
        pinned.append(bytearray(nbytes))
        return pinned[-1]

    xp.cuda = SimpleNamespace(alloc_pinned_memory=alloc_pinned_memory, Event=_Event,
                              get_current_stream=lambda: stream, pinned=pinned, Device=_Device)
    return xp


class _Device:
    """cupy.cuda.Device as a context: the thread's current device (0 unless set), by thread."""

    local = threading.local()

    def __init__(self, i):
        self.i = i

    def __enter__(self):
        self.before, _Device.local.current = _Device.current(), self.i

    def __exit__(self, *exc):
        _Device.local.current = self.before

    @staticmethod
    def current():
        return getattr(_Device.local, "current", 0)


def _decoded(got, want, label) -> Decoded:
    return Decoded(np.array(got, np.uint64).view(_DeviceArray), np.zeros(len(got), np.int32).view(_DeviceArray),
                   np.array(want, np.int64), np.arange(len(got)), [f"{label}/{k}" for k in range(len(got))], ())


def test_the_lagged_check_waits_for_its_own_results_not_for_the_stream():
    """Before: checking batch k-2 copied its results back with a blocking get, which waits for
    everything queued on the stream, batch k's nvCOMP decode included: the host could stage and
    launch nothing while the GPU decoded. Now each call's results go to page-locked memory by an
    asynchronous copy queued behind it, and a check waits only for that copy's event."""
    stream = _Stream()
    xp = _device_namespace(stream)
    engine = _bare_engine(xp)
    engine._state()  # its staging slots' events made
    _DeviceArray.blocking_gets, _DeviceArray.outs, _Event.made = 0, [], []
    layouts = [SimpleNamespace(labels=[]) for _ in range(5)]
    for k, layout in enumerate(layouts):
        engine._queue(_decoded([8, 8], [8, 8], f"b{k}"), layout)
        engine._queue(_decoded([4], [4], f"b{k}"), layout)
    assert _DeviceArray.blocking_gets == 0 and stream.syncs == 0
    assert len(_DeviceArray.outs) == 10 and len(_Event.made) == 10 and all(e.recorded == 1 for e in _Event.made)
    for out, memory in zip(_DeviceArray.outs, xp.cuda.pinned):  # each copy lands in its own page-locked buffer
        assert out.ctypes.data == np.frombuffer(memory, np.uint8).ctypes.data
    assert [e.waited for e in _Event.made] == [1] * 6 + [0] * 4  # batches 0-2 checked, 3-4 still pending
    engine.finish()
    assert _DeviceArray.blocking_gets == 0 and all(e.waited == 1 for e in _Event.made)


def test_a_lagged_check_still_fails_the_read_naming_the_chunk():
    engine = _bare_engine(_device_namespace(_Stream()))
    layouts = [SimpleNamespace(labels=[]) for _ in range(3)]
    engine._queue(_decoded([8, 7], [8, 8], "b0"), layouts[0])
    engine._queue(_decoded([8], [8], "b1"), layouts[1])
    with pytest.raises(CorruptDataError, match="b0/1: decodes to 7 bytes, the chunk needs 8"):
        engine._queue(_decoded([8], [8], "b2"), layouts[2])


def test_the_copy_back_is_cupys_asynchronous_get_into_pinned_memory():
    """The CuPy calls copy_back makes, as the installed CuPy spells them."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the GPU extra)")
    # Cython methods carry their signature as the docstring's first line
    assert cupy.ndarray.get.__doc__.splitlines()[0].endswith("get(self, stream=None, order='C', out=None, "
                                                             "blocking=True)")
    assert {"block", "disable_timing"} <= set(inspect.signature(cupy.cuda.Event).parameters)
    assert hasattr(cupy.cuda.Event, "record") and hasattr(cupy.cuda.Stream, "synchronize")
    assert issubclass(cupy.cuda.memory.OutOfMemoryError, MemoryError)


def test_a_failed_read_waits_for_what_it_queued():
    """Before: abort() only forgot the pending results; the scatter and fill launches already
    queued went on writing into `out` after the read had raised (and the results' copies into
    host memory freed by then). Now discard() waits for the stream first."""
    stream = _Stream()
    engine = _bare_engine(_device_namespace(stream))
    engine._queue(_decoded([8], [8], "b0"), SimpleNamespace(labels=[]))
    engine.discard()
    assert stream.syncs == 1 and engine._state().pending == []


def test_a_cuda_error_at_the_wait_does_not_hide_the_reads_own_error():
    stream = _Stream(fail=RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered"))
    engine = _bare_engine(_device_namespace(stream))
    engine._queue(_decoded([8], [8], "b0"), SimpleNamespace(labels=[]))
    engine.discard()  # does not raise: the read's own error is the one on its way out
    assert stream.syncs == 1 and engine._state().pending == []


def _refusing_capi(status: int):
    """nvCOMP's zstd entry points as Python stand-ins: the decode call itself refused with `status`."""
    def temp_size(n, largest, opts, temp, total, stream):
        return 0

    def decompress(*args):
        return status

    return {("Zstd", "DecompressGetTempSize"): temp_size, ("Zstd", "DecompressAsync"): decompress}


@pytest.mark.parametrize("status, data", [(10, False), (11, False), (17, False), (10000, False), (12, True)])
def test_only_a_data_status_of_a_refused_call_is_corrupt_data(tmp_path, monkeypatch, status, data):
    """Before: every status the C API returned for a call became CorruptDataError, so a GPU that
    nvCOMP does not support (nvcompErrorNotSupported) or a wrong argument (nvcompErrorInvalidValue)
    read as "the chunk is corrupt". A call's own status says nothing about the data unless it is
    one of the data statuses."""
    from gpuzarr.devices import nvcomp_batch

    frame = zstandard.ZstdCompressor().compress(bytes(4096))
    chain = gpuzarr.open(_zstd_array_path(tmp_path, 4096), device="cpu")._reader.locator.leaf_chain
    layout = build_layout(_zstd_batch([frame]), chain, lambda i: None)
    monkeypatch.setattr(nvcomp_capi, "load", lambda: _refusing_capi(status))
    engine = _bare_engine(_device_namespace(_Stream()))
    with pytest.raises(Exception) as error:
        engine.decompress("zstd", layout.staging, np.zeros(layout.work_nbytes, np.uint8), layout.streams["zstd"],
                          layout)
    assert isinstance(error.value, CorruptDataError) == data
    assert nvcomp_batch.status_name(status) in str(error.value)


class _OutOfMemory(MemoryError):
    """What CuPy raises when its pool cannot allocate (cupy.cuda.memory.OutOfMemoryError is a MemoryError)."""


class _FullStandin(StandinEngine):
    def empty(self, nbytes):
        raise _OutOfMemory(f"Out of memory allocating {nbytes:,} bytes (allocated so far: 0 bytes).")


def test_the_gpu_out_of_memory_outside_nvcomp_is_a_device_memory_error(tmp_path):
    """Before: only nvCOMP's own calls turned CuPy's OutOfMemoryError into DeviceMemoryError; the
    batch's largest buffer (`work`, up to batch_decoded_bytes) and the staging upload raised
    CuPy's error as it was, naming no setting."""
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    chunks = {(k, 0): zstandard.ZstdCompressor().compress(data[k * 32:(k + 1) * 32].tobytes()) for k in range(2)}
    _write_v3(tmp_path / "a", data.shape, "uint16", (32, 64), [LE, ZSTD], chunks)
    with pytest.raises(DeviceMemoryError, match=r"batch of 2 chunks .*batch_decoded_bytes") as error:
        gpuzarr.open(str(tmp_path / "a"), device="cpu").read(..., device=GpuDevice(_FullStandin()))
    assert not isinstance(error.value, CorruptDataError) and isinstance(error.value.__cause__, _OutOfMemory)


def test_the_status_names_are_the_headers_every_one(tmp_path):
    """nvcomp_batch.STATUS_NAMES (what a failure message names) against shared_types.h: every
    value equal (gcc static asserts) and none missing (21-24 were, named "nvCOMP status 21")."""
    import os
    import re
    import shutil
    import subprocess

    from gpuzarr.devices.nvcomp_batch import STATUS_NAMES

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the header check with")
    include = os.path.join(os.path.dirname(nvcomp_capi.library_path()), "..", "include")
    header = open(os.path.join(include, "nvcomp", "shared_types.h")).read()
    enum = re.search(r"typedef enum\s*\w*\s*\{([^}]*)\}\s*nvcompStatus_t;", header).group(1)
    declared = set(re.findall(r"^\s*(nvcom\w+)\s*=", enum, flags=re.M))
    assert declared == set(STATUS_NAMES.values()) | {"nvcompSuccess"}
    source = tmp_path / "statuses.c"
    source.write_text("#include <nvcomp.h>\n" + "".join(f'_Static_assert({name} == {code}, "{name}");\n'
                                                         for code, name in STATUS_NAMES.items()))
    result = subprocess.run(["gcc", "-std=gnu11", "-fsyntax-only", "-I", include, str(source)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_structures_passed_by_value_have_the_headers_alignment(tmp_path):
    """The options structs go by value (on the stack, by libffi, for these sizes): their alignment
    decides the argument's slot, so ctypes' alignment must be the C one, not only their size."""
    import ctypes
    import os
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the header check with")
    include = os.path.join(os.path.dirname(nvcomp_capi.library_path()), "..", "include")
    pairs = [(f"nvcompBatched{a}DecompressOpts_t", nvcomp_capi.DecompressOpts) for a in nvcomp_capi.ALGORITHMS]
    pairs += [("nvcompBatchedCRC32Opts_t", nvcomp_capi.CRC32Opts), ("nvcompCRC32KernelConf_t", nvcomp_capi.CRC32KernelConf),
              ("nvcompAlignmentRequirements_t", nvcomp_capi.Alignments)]
    source = tmp_path / "align.c"
    source.write_text("#include <nvcomp.h>\n" + "".join(
        f'_Static_assert(_Alignof({c}) == {ctypes.alignment(t)} && sizeof({c}) == {ctypes.sizeof(t)}, "{c}");\n'
        for c, t in pairs))
    result = subprocess.run(["gcc", "-std=gnu11", "-fsyntax-only", "-I", include, str(source)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_an_io_threads_staging_events_belong_to_the_engines_device():
    """Before: a thread's staging slots (and their events) were made under that thread's current
    device; the fetch threads of a staged read never set one (device 0), so on device 1 the
    upload recorded a device-0 event on a device-1 stream (cudaErrorInvalidResourceHandle)."""
    engine = _bare_engine(_device_namespace(_Stream()))
    engine.device_id = 1
    _Event.made = []
    done = []
    thread = threading.Thread(target=lambda: done.append(engine.host_ring()(16)))
    thread.start()
    thread.join()
    assert done and [e.device for e in _Event.made] == [1, 1] and _Device.current() == 0
