"""Findings of a paper review of the GPU path, turned into checks that need no GPU.

Each test either pins down a fact the GPU code relies on (from the installed CuPy / nvCOMP
packages) or reproduces, with fakes standing in for CUDA, a defect a GPU run would hit. Tests
marked ``xfail(strict=True)`` fail today because of a defect (or a documented risk) in gpuzarr/; the reason
names it. Remove the mark once the fix lands (strict: an unexpected pass is reported)."""

from __future__ import annotations

import json
import re
import threading
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numcodecs
import numpy as np
import pytest
import zstandard

import gpuzarr
from gpu_standin import StandinEngine
from gpuzarr.devices.gpu import CupyEngine, GpuDevice, PinnedPool
from gpuzarr.devices.gpu_layout import ALIGN, build_layout
from gpuzarr.devices.nvcomp_batch import NVCOMP_ALGORITHMS
from gpuzarr.errors import CorruptDataError
from gpuzarr.fetch import FetchedBatch
from gpuzarr.pipeline import Settings


# ---------------------------------------------------------------- helpers

def _write_v3(path: Path, shape, dtype: str, chunk, codecs: list, chunks: dict, fill_value=0) -> None:
    """A plain (unsharded) Zarr v3 array whose chunk files hold exactly the given bytes."""
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value, "codecs": codecs,
    }
    (path / "zarr.json").write_text(json.dumps(meta))
    for coords, data in chunks.items():
        key = path / "c" / Path(*map(str, coords))
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(data)


LE = {"name": "bytes", "configuration": {"endian": "little"}}
ZSTD = {"name": "zstd", "configuration": {"level": 3, "checksum": False}}


class _NumpyBackedMemory:
    """What cupy.cuda.PinnedMemoryPointer needs of its `mem` (ptr, size), backed by NumPy, so the
    REAL PinnedMemoryPointer class (its API, its buffer protocol) is exercised without CUDA."""

    def __init__(self, nbytes: int):
        self.buf = np.zeros(nbytes, np.uint8)
        self.ptr = self.buf.ctypes.data
        self.size = nbytes


class _FakeEvent:
    def __init__(self, **kwargs):
        self.records = 0

    def record(self, stream=None):
        self.records += 1

    def synchronize(self):
        pass


def _fake_cupy():
    """A `cupy` stand-in for PinnedPool/CupyEngine: the real PinnedMemoryPointer class over host memory."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the [test] extra installs it on Linux x86_64)")

    def alloc_pinned_memory(nbytes):
        return cupy.cuda.PinnedMemoryPointer(_NumpyBackedMemory(nbytes), 0)

    class _Dev:
        def __init__(self, n):
            self.n = n

        def set(self, host, stream=None):
            assert host.nbytes == self.n

    cuda = SimpleNamespace(Event=_FakeEvent, alloc_pinned_memory=alloc_pinned_memory,
                           get_current_stream=lambda: SimpleNamespace(ptr=0), Device=lambda i: nullcontext())
    return SimpleNamespace(cuda=cuda, empty=lambda n, dtype=None: _Dev(n), uint8=np.uint8, concatenate=np.concatenate,
                           stack=np.stack, int64=np.int64)


class _RecordingStandin(StandinEngine):
    """The CPU stand-in, keeping what each nvCOMP call received (table and layout)."""

    def __init__(self):
        super().__init__()
        self.decodes = []

    def decompress(self, algorithm, staging, work, table, layout) -> None:
        self.decodes.append((algorithm, {k: v.copy() for k, v in table.items()}, layout))
        super().decompress(algorithm, staging, work, table, layout)


# ---------------------------------------------------------------- CuPy / nvCOMP facts

def test_pinned_memory_pointer_size_is_a_method_and_it_exports_a_buffer():
    """CuPy's PinnedMemoryPointer: `size` is a METHOD (size_t size(self)), and np.frombuffer
    works on it (so a NumPy view of alloc_pinned_memory memory is the pinned memory itself)."""
    cupy = pytest.importorskip("cupy")
    p = cupy.cuda.PinnedMemoryPointer(_NumpyBackedMemory(64), 0)
    assert callable(p.size) and p.size() == 64
    view = np.frombuffer(p, dtype=np.uint8, count=16)
    view[:] = 7
    assert view.ctypes.data == p.ptr  # no copy: ndarray.set() hands CUDA the pinned address


def test_pinned_pool_can_reuse_a_slot():
    pool = PinnedPool(_fake_cupy(), slots=2)
    for nbytes in (64, 64, 32, 128):  # slots 0, 1, 0 (reuse), 1 (reuse, grow)
        host, event = pool.take(nbytes)
        assert host.nbytes == nbytes
        event.record()


def _header_constants(name_re: str) -> dict[str, int]:
    include = pytest.importorskip("nvidia.libnvcomp").__path__[0]
    out = {}
    for header in Path(include, "include", "nvcomp").glob("*.h"):
        for m in re.finditer(rf"static const size_t nvcomp(\w+?){name_re}\s*=\s*([^;]+);", header.read_text()):
            if m.group(1) not in NVCOMP_ALGORITHMS.values():
                continue
            expr = re.sub(r"(?<=[0-9A-Fa-f])(?:[uU]?[lL]{1,2}|[uU])\b", "", m.group(2))  # 1ull -> 1
            out[m.group(1)] = int(eval(expr, {"__builtins__": {}}))  # constant expressions like (1 << 31) - 1
    return out


def test_align_covers_every_decompression_alignment_nvcomp_requires():
    """gpu_layout.ALIGN (16) is a multiple of each algorithm's documented decompression alignment
    (zstd.h 8, deflate.h 4, lz4.h 4, snappy.h 1 in nvCOMP 6.0)."""
    required = _header_constants("RequiredDecompressionAlignment")
    for algorithm in NVCOMP_ALGORITHMS.values():
        assert algorithm in required, f"no nvcomp{algorithm}RequiredDecompressionAlignment in the headers"
        assert ALIGN % required[algorithm] == 0, (algorithm, required[algorithm])


def test_nvcomp_decompression_chunk_limits_are_above_zarr_chunk_sizes():
    """Per-chunk decompression limits (zstd/snappy 2 GiB - 1, deflate/lz4 4 GiB - 1): chunks of
    KiB..hundreds of MiB are fine; only > 2 GiB chunks are out of range (see the xfail below)."""
    limits = _header_constants("DecompressionMaxAllowedChunkSize")
    for algorithm in NVCOMP_ALGORITHMS.values():
        assert limits[algorithm] >= (1 << 31) - 1, (algorithm, limits[algorithm])


def test_chunks_over_the_nvcomp_limit_are_not_sent_to_nvcomp(tmp_path):
    nbytes = 1 << 31  # one byte over nvcompZstdDecompressionMaxAllowedChunkSize
    _write_v3(tmp_path / "a", (nbytes,), "uint8", (nbytes,), [LE, ZSTD], {})
    chain = gpuzarr.open(str(tmp_path / "a"), device="cpu")._reader.locator.leaf_chain
    # a zstd frame header that declares Frame_Content_Size = 2**31 (never decoded here)
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + nbytes.to_bytes(8, "little") + bytes(8)
    batch = FetchedBatch(np.frombuffer(frame, np.uint8), np.array([0]), np.array([len(frame)]),
                         np.array([True]), ["c/0"])
    layout = build_layout(batch, chain, lambda i: np.zeros(16, np.uint8))
    assert "zstd" not in layout.streams


def test_algorithm_names_are_the_ones_nvcomp_documents():
    """Codec(algorithm=...) names: the nvCOMP 6 Codec docstring spells them 'LZ4', 'Snappy',
    'Deflate', 'Zstd' (and NVIDIA's Python samples pass exactly these strings)."""
    nvcomp = pytest.importorskip("nvidia.nvcomp")
    doc = nvcomp.Codec.__init__.__doc__ + nvcomp.Codec.get_uncomp_buffer_size.__doc__
    for name in NVCOMP_ALGORITHMS.values():
        assert re.search(rf"\b{name}\b", doc), name


# ---------------------------------------------------------------- CupyEngine.finish error mapping

def _misaligned_zstd_array(tmp_path: Path) -> tuple[gpuzarr.Array, np.ndarray]:
    data = np.arange(50, dtype=np.uint8).reshape(2, 25)  # 25-byte chunks: chunk 1 lands at offset 25
    comp = numcodecs.Zstd(level=1)
    _write_v3(tmp_path / "a", (2, 25), "uint8", (1, 25), [LE, ZSTD],
              {(i, 0): comp.encode(data[i].tobytes()) for i in range(2)})
    return gpuzarr.open(str(tmp_path / "a"), device="cpu"), data


def _decoded(sizes, expected, chunks, labels, statuses=None):
    """What decode_batch queues, with the sizes and statuses nvCOMP "wrote" (host arrays)."""
    from gpuzarr.devices.nvcomp_batch import Decoded

    statuses = np.zeros(len(sizes), np.int32) if statuses is None else np.asarray(statuses, np.int32)
    return Decoded(np.asarray(sizes, np.uint64), statuses, np.asarray(expected, np.int64), np.asarray(chunks),
                   labels, ())


def _finish_with_one_bad_size(layout, table, k: int) -> None:
    engine = _bare_engine(_fake_cupy())
    sizes = table["dst_size"].copy()
    sizes[k] -= 1
    engine._state().pending = [(_decoded(sizes, table["dst_size"], table["chunk"], layout.labels), layout)]
    engine.finish()


def _capture_zstd_decode(tmp_path):
    arr, data = _misaligned_zstd_array(tmp_path)
    engine = _RecordingStandin()
    np.testing.assert_array_equal(arr.read(..., device=GpuDevice(engine)), data)
    [(algorithm, table, layout)] = engine.decodes
    assert algorithm == "zstd" and table["dst"][0] % ALIGN == 0 and layout.raw_nbytes == 25
    return table, layout


def test_finish_names_the_chunk_of_a_stream_decoded_in_place(tmp_path):
    table, layout = _capture_zstd_decode(tmp_path)
    label = layout.labels[np.flatnonzero(layout.present)[0]]
    with pytest.raises(CorruptDataError, match=re.escape(str(label))):
        _finish_with_one_bad_size(layout, table, 0)


def test_finish_names_the_chunk_of_a_stream_routed_through_temp(tmp_path, monkeypatch):
    from gpuzarr.devices import gpu_layout

    # nvCOMP 6 writes zstd output anywhere (its query: 1): were it to ask for 16, rows at 25 go via temp
    monkeypatch.setattr(gpu_layout, "decode_alignments", lambda: {"zstd": (ALIGN, ALIGN)})
    table, layout = _capture_zstd_decode(tmp_path)
    assert table["dst"][1] >= layout.n * layout.raw_nbytes  # chunk 1 (offset 25) went via temp
    label = layout.labels[np.flatnonzero(layout.present)[1]]
    with pytest.raises(CorruptDataError, match=re.escape(str(label))):
        _finish_with_one_bad_size(layout, table, 1)


# ---------------------------------------------------------------- state across reads / threads

def test_a_failed_read_does_not_poison_the_next_one(tmp_path):
    short = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(16))  # 16 of 32 bytes; no FCS
    lying = numcodecs.Zstd().encode(bytes(16))  # FCS says 16: refused on the host
    good = numcodecs.Zstd().encode(bytes(32))
    _write_v3(tmp_path / "bad", (8, 8), "uint16", (4, 4), [LE, ZSTD],
              {(0, 0): short, (0, 1): lying, (1, 0): good, (1, 1): good})
    _write_v3(tmp_path / "ok", (4, 4), "uint16", (4, 4), [LE, ZSTD], {(0, 0): good})
    device = GpuDevice(StandinEngine())
    one_chunk_batches = Settings(batch_chunks=1)
    with pytest.raises(CorruptDataError):
        gpuzarr.open(str(tmp_path / "bad"), device="cpu", settings=one_chunk_batches).read(..., device=device)
    ok = gpuzarr.open(str(tmp_path / "ok"), device="cpu").read(..., device=device)
    np.testing.assert_array_equal(ok, np.zeros((4, 4), np.uint16))


def _bare_engine(cupy_like) -> CupyEngine:
    engine = CupyEngine.__new__(CupyEngine)
    engine.xp = cupy_like
    engine._local = threading.local()
    engine._states, engine._states_lock = [], threading.Lock()
    engine.device_id = 0
    return engine


def test_each_upload_records_the_event_of_its_own_slot():
    engine = _bare_engine(_fake_cupy())
    first, first_event = engine.host_ring()(8)  # batch a staged in slot 0
    engine.host_ring()(8)  # batch b staged in slot 1
    engine.upload(first, first_event)  # batch a uploaded
    assert engine._state().pinned._slots[0][2].records == 1, "slot 0's copy was never recorded"


# ---------------------------------------------------------------- edge batches (these pass)

def test_all_absent_batch_only_fills(tmp_path):
    _write_v3(tmp_path / "a", (8, 8), "float32", (4, 4), [LE, ZSTD], {}, fill_value=1.5)
    engine = StandinEngine()
    got = gpuzarr.open(str(tmp_path / "a"), device="cpu").read(..., device=GpuDevice(engine))
    np.testing.assert_array_equal(got, np.full((8, 8), 1.5, np.float32))
    assert engine.calls == {"fill": 1}


def test_zero_size_array_makes_no_device_calls(tmp_path):
    _write_v3(tmp_path / "a", (0, 8), "int16", (4, 4), [LE, ZSTD], {})
    engine = StandinEngine()
    got = gpuzarr.open(str(tmp_path / "a"), device="cpu").read(..., device=GpuDevice(engine))
    assert got.shape == (0, 8) and not engine.calls


def _snappy_literals(data: bytes) -> bytes:
    """A valid raw snappy stream made of literal elements only (varint length, then literals)."""
    out, n = bytearray(), len(data)
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    for start in range(0, len(data), 60):
        piece = data[start:start + 60]
        out.append((len(piece) - 1) << 2)
        out += piece
    return bytes(out)


def _unsnappy_literals(stream: bytes) -> bytes:
    pos = shift = n = 0
    while True:
        byte = stream[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    out = bytearray()
    while pos < len(stream):
        tag = stream[pos]
        assert tag & 3 == 0 and tag >> 2 < 60, "literal-only stand-in"
        length = (tag >> 2) + 1
        out += stream[pos + 1:pos + 1 + length]
        pos += 1 + length
    assert len(out) == n
    return bytes(out)


class _SnappyStandin(StandinEngine):
    def _decode(self, algorithm: str, stream: bytes, dsize: int) -> bytes:
        return _unsnappy_literals(stream) if algorithm == "snappy" else super()._decode(algorithm, stream, dsize)


def test_blosc_snappy_frames_take_the_nvcomp_snappy_path(tmp_path):
    """numcodecs cannot write blosc+snappy, so no corpus case covers nvCOMP 'Snappy'; a
    hand-made blosc 1.x frame (one block, don't-split, snappy) checks the host half of that path."""
    data = np.arange(16, dtype="<u2").reshape(4, 4)
    raw = data.tobytes()
    stream = _snappy_literals(raw)
    assert len(stream) != len(raw)  # otherwise blosc would store it raw
    body = len(stream).to_bytes(4, "little") + stream
    flags = (2 << 5) | 0x10  # compressor format 2 (snappy), don't split, no shuffle
    cbytes = 16 + 4 + len(body)
    frame = bytes([2, 1, flags, 2]) + np.array([len(raw), len(raw), cbytes], "<i4").tobytes()
    frame += (20).to_bytes(4, "little") + body
    blosc = {"name": "blosc", "configuration": {"cname": "snappy", "clevel": 5, "shuffle": "noshuffle",
                                                 "typesize": 2, "blocksize": 0}}
    _write_v3(tmp_path / "a", (4, 4), "uint16", (4, 4), [LE, blosc], {(0, 0): frame})
    engine = _SnappyStandin()
    got = gpuzarr.open(str(tmp_path / "a"), device="cpu").read(..., device=GpuDevice(engine))
    np.testing.assert_array_equal(got, data)
    assert engine.calls["decompress:snappy"] == 1 and NVCOMP_ALGORITHMS["snappy"] == "Snappy"


# ---------------------------------------------------------------- device="auto" small reads into `out`

class _CupyLikeArray(np.ndarray):
    """A NumPy array with CuPy's ndarray.set() contract (cupy/_core/core.pyx: the host array's
    dtype must equal the device array's, else TypeError '... array cannot be set to ... array')."""

    def set(self, arr, stream=None):
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError("Shape mismatch")
        self[...] = arr


def test_auto_small_read_of_big_endian_array_into_out(tmp_path):
    from gpuzarr.devices.base import AutoDevice, get_device

    data = np.arange(16, dtype=">f8").reshape(4, 4)  # a Zarr v2 '>f8' array: the CPU output stays '>f8'
    path = tmp_path / "a"
    path.mkdir()
    (path / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4, 4], "chunks": [4, 4], "dtype": ">f8", "order": "C",
        "compressor": {"id": "zstd", "level": 1}, "fill_value": 0, "filters": None}))
    (path / "0.0").write_bytes(numcodecs.Zstd().encode(data.tobytes()))
    arr = gpuzarr.open(str(path), device="cpu")
    auto = AutoDevice(GpuDevice(StandinEngine()), get_device("cpu"), cpu_below=1 << 20)
    out = np.empty((4, 4), np.float64).view(_CupyLikeArray)
    got = arr.read(..., device=auto, out=out)
    np.testing.assert_array_equal(np.asarray(got), data)


@pytest.mark.parametrize("version, ok", [("6.0.0", True), ("6.0.0.12", True), ("7.1", True), ("5.3.0", False),
                                         ("5.1", False), ("4", False), ("unknown", False)])
def test_nvcomp_before_6_is_refused_with_the_reason(version, ok):
    """nvCOMP 5.x has another batched C API than the one gpuzarr calls (6.0: *DecompressOpts_t options)."""
    from gpuzarr.devices.gpu import nvcomp_version_problem

    problem = nvcomp_version_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert version in problem and "6.0 or newer" in problem


def test_the_installed_nvcomp_is_new_enough():
    nvcomp = pytest.importorskip("nvidia.nvcomp", reason="nvCOMP is not installed (the [test] extra installs it on Linux x86_64)")
    from gpuzarr.devices.gpu import nvcomp_version_problem

    assert nvcomp_version_problem(nvcomp.__version__) is None, nvcomp.__version__


@pytest.mark.parametrize("message, kind", [
    ("nvCOMP: cudaErrorMemoryAllocation: out of memory", "memory"),
    ("Out of memory allocating 2147483648 bytes", "memory"),
    ("cudaErrorIllegalAddress: an illegal memory access was encountered", "cuda"),
    ("nvcompErrorCannotDecompress", "data"),
])
def test_only_data_failures_of_nvcomp_are_corrupt_data(message, kind):
    from gpuzarr.devices.gpu import decode_error
    from gpuzarr.devices.gpu_layout import GpuBatchLayout

    table = {"src_size": np.array([100, 50]), "chunk": np.array([1, 2])}
    layout = GpuBatchLayout(3, 4096, np.ones(3, bool), np.zeros(0, np.uint8), None, {}, {}, {}, {}, 0,
                            labels=["c/0", "c/1", "c/2"])
    original = RuntimeError(message)
    got = decode_error(original, "zstd", table, layout)
    if kind == "memory":
        assert isinstance(got, gpuzarr.DeviceMemoryError) and not isinstance(got, CorruptDataError)
        assert "2 zstd streams" in str(got) and "150 compressed" in str(got) and "batch_bytes" in str(got)
    elif kind == "cuda":
        assert got is original
    else:
        assert isinstance(got, CorruptDataError) and "c/1" in str(got)


def test_a_read_of_many_batches_keeps_the_buffers_of_two_batches_at_most():
    """CupyEngine checks (and so lets go of) each batch's nvCOMP buffers once two later batches
    are queued: a 40 GiB read no longer holds 40 GiB of scratch until finish()."""
    from gpuzarr.devices.gpu import lagged

    engine = _bare_engine(_fake_cupy())
    state = engine._state()
    layouts = [SimpleNamespace(labels=[f"c/{k}"]) for k in range(5)]
    held = []
    for k, layout in enumerate(layouts):
        for _ in range(2):  # two nvCOMP calls (algorithms) per batch
            state.pending.append((_decoded([10], [10], [0], layout.labels), layout))
        old, state.pending = lagged(state.pending)
        held.append(len({id(layout) for _, layout in state.pending}))
        assert all(lay is not layouts[j] for _, lay in state.pending for j in range(k - 1)), "an old batch kept"
        assert len(old) == (2 if k >= 2 else 0)
    assert held == [1, 2, 2, 2, 2]
    engine.finish()
    assert state.pending == []


def test_a_wrong_size_or_a_status_fails_the_read_naming_the_chunk():
    from gpuzarr.devices.nvcomp_batch import check

    bad_size = _decoded([10, 9], [10, 10], [0, 1], ["c/0", "c/7"])
    with pytest.raises(CorruptDataError, match="c/7: decodes to 9 bytes, the chunk needs 10"):
        check(np, [_decoded([10], [10], [0], ["x"]), bad_size])
    bad_status = _decoded([10, 10], [10, 10], [0, 1], ["c/0", "c/3"], statuses=[0, 12])
    with pytest.raises(CorruptDataError, match="c/3: nvCOMP could not decode it .nvcompErrorCannotDecompress"):
        check(np, [bad_status])
    check(np, [_decoded([10, 4], [10, 4], [0, 1], ["a", "b"])])  # all fine: no error



def _host_device_namespace():
    """NumPy as the "device" namespace: its arrays' addresses are real (host) addresses, so
    pointer arithmetic on them can be checked by a stand-in C function that follows them."""
    names = ("asarray", "ascontiguousarray", "zeros", "empty", "concatenate", "stack", "uint64", "int64", "int32",
             "uint8")
    return SimpleNamespace(**{n: getattr(np, n) for n in names},
                           cuda=SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=12345), Event=_FakeEvent,
                                                Device=lambda i: nullcontext()))


def _standin_capi(calls):
    """nvcompBatchedZstdDecompressGetTempSize/Async that read and write through the addresses
    they are given, as nvCOMP does on the device: the streams, sizes, pointers, statuses."""
    import ctypes

    def temp_size(n, largest, opts, temp, total, stream):
        calls.append(("temp", n, largest, total, stream))
        ctypes.cast(temp, ctypes.POINTER(ctypes.c_size_t))[0] = 64
        return 0

    def decompress(comp_ptrs, comp_bytes, out_bytes, actual, n, temp, temp_bytes, out_ptrs, opts, statuses, stream):
        calls.append(("decode", n, temp_bytes, stream))
        view = lambda addr, t: np.ctypeslib.as_array((t * n).from_address(addr))  # noqa: E731
        src, size, cap = view(comp_ptrs, ctypes.c_uint64), view(comp_bytes, ctypes.c_uint64), view(out_bytes, ctypes.c_uint64)
        dst, got, status = view(out_ptrs, ctypes.c_uint64), view(actual, ctypes.c_uint64), view(statuses, ctypes.c_int32)
        for i in range(n):
            try:
                out = zstandard.ZstdDecompressor().decompress(ctypes.string_at(int(src[i]), int(size[i])),
                                                              max_output_size=int(cap[i]))
            except zstandard.ZstdError:
                status[i] = 12  # nvcompErrorCannotDecompress
                continue
            ctypes.memmove(int(dst[i]), out, min(len(out), int(cap[i])))
            got[i], status[i] = len(out), 0
        return 0

    return {("Zstd", "DecompressGetTempSize"): temp_size, ("Zstd", "DecompressAsync"): decompress}


def _zstd_batch(frames):
    from gpuzarr.fetch import FetchedBatch

    staging, offsets = bytearray(), []
    for frame in frames:
        staging += bytes(-len(staging) % ALIGN)
        offsets.append(len(staging))
        staging += frame
    sizes = np.array([len(f) for f in frames], np.int64)
    return FetchedBatch(np.frombuffer(bytes(staging), np.uint8).copy(), np.array(offsets, np.int64), sizes,
                        np.ones(len(frames), bool), [f"c/{k}" for k in range(len(frames))])


def test_the_c_api_decode_writes_each_chunk_where_the_layout_says(tmp_path, monkeypatch):
    """CupyEngine.decompress end to end but for nvCOMP itself: the stream table goes up, the
    pointer arrays are base + offsets, nvCOMP's stand-in follows them, and finish() reads the
    sizes and statuses back; the decoded rows are the chunks."""
    from gpuzarr.devices import nvcomp_capi

    chunks = [bytes([k]) * 4096 for k in range(3)]
    frames = [zstandard.ZstdCompressor().compress(c) for c in chunks]
    chain = gpuzarr.open(_zstd_array_path(tmp_path, 4096), device="cpu")._reader.locator.leaf_chain
    layout = build_layout(_zstd_batch(frames), chain, lambda i: None)
    calls = []
    monkeypatch.setattr(nvcomp_capi, "load", lambda: _standin_capi(calls))
    engine = _bare_engine(_host_device_namespace())
    work = np.zeros(layout.work_nbytes, np.uint8)
    engine.decompress("zstd", layout.staging, work, layout.streams["zstd"], layout)
    engine.finish()
    assert [c[0] for c in calls] == ["temp", "decode"] and calls[1][1:] == (3, 64, 12345)
    assert work[:3 * 4096].tobytes() == b"".join(chunks)


def test_a_stream_nvcomp_cannot_decode_fails_the_read_naming_its_chunk(tmp_path, monkeypatch):
    from gpuzarr.devices import nvcomp_capi

    good = zstandard.ZstdCompressor().compress(bytes((i * 7) % 251 for i in range(4096)))
    broken = good[:-8] + bytes(b ^ 0x5A for b in good[-8:])  # headers hold (the frame is whole), the data does not
    chain = gpuzarr.open(_zstd_array_path(tmp_path, 4096), device="cpu")._reader.locator.leaf_chain
    layout = build_layout(_zstd_batch([good, broken]), chain, lambda i: None)
    monkeypatch.setattr(nvcomp_capi, "load", lambda: _standin_capi([]))
    engine = _bare_engine(_host_device_namespace())
    engine.decompress("zstd", layout.staging, np.zeros(layout.work_nbytes, np.uint8), layout.streams["zstd"], layout)
    with pytest.raises(CorruptDataError, match="c/1: nvCOMP could not decode it"):
        engine.finish()


def _zstd_array_path(tmp_path, nbytes: int) -> str:
    _write_v3(tmp_path / "z", (nbytes,), "uint8", (nbytes,), [LE, ZSTD], {})
    return str(tmp_path / "z")


def test_arrays_the_gpu_cannot_decode_are_refused_whatever_the_selection(tmp_path):
    """An empty selection too (it was read without a word on an H200, while any other raised):
    whether a read works does not hang on what it selects."""
    import zarr
    from zarr.codecs import numcodecs as znc

    z = zarr.create_array(str(tmp_path / "a"), shape=(40,), chunks=(8,), dtype="<i4",
                          filters=[znc.Delta(dtype="<i4")], fill_value=0)
    z[...] = np.arange(40)
    arr = gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(StandinEngine()))
    for sel in (slice(0, 8), slice(3, 3), slice(None, 0)):
        with pytest.raises(gpuzarr.UnsupportedFeatureError, match="CPU only"):
            arr[sel]
    np.testing.assert_array_equal(arr.read(slice(3, 3), device="cpu"), np.zeros(0, "<i4"))


def test_arrays_of_more_dimensions_than_the_placement_kernel_takes_are_refused_on_the_gpu(tmp_path):
    """A 9-d array raised a bare ValueError deep in the layout (found by a differential run);
    the CPU reads it."""
    import zarr

    data = np.arange(2 ** 9, dtype="u2").reshape((2,) * 9)
    zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(1,) * 9, dtype="u2")[...] = data
    arr = gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(StandinEngine()))
    for sel in (Ellipsis, (0,) * 9, (slice(0, 0),)):
        with pytest.raises(gpuzarr.UnsupportedFeatureError, match="more than 8 dimensions"):
            arr[sel]
    np.testing.assert_array_equal(arr.read(device="cpu"), data)
    eight = np.arange(2 ** 8, dtype="u2").reshape((2,) * 8)  # the most the kernel places
    zarr.create_array(str(tmp_path / "b"), shape=eight.shape, chunks=(1,) * 8, dtype="u2")[...] = eight
    arr = gpuzarr.open(str(tmp_path / "b"), device=GpuDevice(StandinEngine()))
    np.testing.assert_array_equal(arr[...], eight)
    np.testing.assert_array_equal(arr.read_batch([(0,) * 7 + (slice(None),)] * 2), np.stack([eight[(0,) * 7]] * 2))


def test_auto_reads_what_only_the_cpu_decodes_there_and_copies_it_up(tmp_path):
    """device="auto" on a GPU: arrays the GPU path refuses (a transpose outside the sharding
    codec, numcodecs filters, more than 8 dimensions) raised for every read; now the CPU
    decodes them and the result is copied up, the report says so. Strings still raise: CuPy
    holds none."""
    import zarr
    from zarr.codecs import BytesCodec, ShardingCodec, TransposeCodec, ZstdCodec
    from zarr.codecs import numcodecs as znc

    from gpuzarr.devices.base import AutoDevice, get_device

    data = np.arange(16 * 8, dtype="u2").reshape(16, 8)
    zarr.create_array(str(tmp_path / "t"), shape=data.shape, chunks=(8, 8), dtype="u2", compressors=None,
                      serializer=ShardingCodec(chunk_shape=(4, 4), codecs=[BytesCodec(), ZstdCodec()]),
                      filters=[TransposeCodec(order=(1, 0))])[...] = data
    zarr.create_array(str(tmp_path / "d"), shape=data.shape, chunks=(8, 8), dtype="<i4",
                      filters=[znc.Delta(dtype="<i4")])[...] = data
    zarr.create_array(str(tmp_path / "s"), shape=(4,), chunks=(2,), dtype=str)[...] = np.array(["a", "b", "c", "d"])
    auto = AutoDevice(GpuDevice(StandinEngine()), get_device("cpu"), cpu_below=0)  # (nothing is "small")
    for name in ("t", "d"):
        arr = gpuzarr.open(str(tmp_path / name), device=auto)
        report = gpuzarr.ReadReport()
        np.testing.assert_array_equal(arr.read((slice(2, 14), slice(1, 8)), report=report), data[2:14, 1:])
        assert any(note.startswith("auto: ") and "decoded on the CPU and copied to the GPU" in note
                   for note in report.notes)
        np.testing.assert_array_equal(arr.read_batch([(slice(0, 4), slice(0, 4))] * 2), np.stack([data[:4, :4]] * 2))
        wrong = np.zeros((3, 3), data.dtype)  # an out the GPU would refuse is refused here too, left untouched
        with pytest.raises(ValueError, match="out has shape"):
            arr.read((slice(0, 4), slice(0, 4)), out=wrong)
        assert not wrong.any()
        with pytest.raises(TypeError, match="out must be"):
            arr.read((slice(0, 4), slice(0, 4)), out=[0])
        with pytest.raises(gpuzarr.UnsupportedFeatureError, match="decoded on the CPU only"):
            arr.read(device=GpuDevice(StandinEngine()))  # a GPU asked for by name: refused, saying why
    with pytest.raises(gpuzarr.UnsupportedFeatureError):
        gpuzarr.open(str(tmp_path / "s"), device=auto)[...]


def test_a_chunk_too_large_to_decode_on_the_host_is_a_device_memory_error(tmp_path):
    """A chunk nvCOMP cannot take (past its per-chunk limit) is decoded on the host; where the
    metadata makes it larger than memory, that is DeviceMemoryError, as on the CPU path (it was
    a bare MemoryError: found by fuzzing the GPU orchestration)."""
    import zarr

    z = zarr.create_array(str(tmp_path / "a"), shape=(64,), chunks=(64,), dtype="u1",
                          compressors=zarr.codecs.ZstdCodec(), fill_value=0)
    z[...] = np.arange(64, dtype="u1")
    chunk = tmp_path / "a" / "c" / "0"  # a frame without a content size: no header to refuse it by
    chunk.write_bytes(zstandard.ZstdCompressor(write_content_size=False).compress(bytes(range(64))))
    meta = json.loads((tmp_path / "a" / "zarr.json").read_text())
    meta["shape"] = meta["chunk_grid"]["configuration"]["chunk_shape"] = [1 << 42]
    (tmp_path / "a" / "zarr.json").write_text(json.dumps(meta))
    for device in ("cpu", GpuDevice(StandinEngine())):
        with pytest.raises(gpuzarr.DeviceMemoryError, match="a chunk decodes to"):
            gpuzarr.open(str(tmp_path / "a"), device=device)[:16]
