"""The GPU device: the orchestration of one batch (shared with a CPU stand-in in the tests) and
the thin engine that runs it with CuPy and nvCOMP.

Per batch, whatever its number of chunks: one host→device copy, one nvCOMP call per algorithm
(and one per checksum kind), one launch per copy table, one per shuffle kind, the
array-namespace decode (a fixed number of CuPy ops) and one scatter + one fill launch. No host
synchronisation happens inside a read; the decoded sizes, statuses and checksums nvCOMP reports
are read back two batches later, the rest by `finish()`. Everything runs on the caller's
current CuPy stream."""

from __future__ import annotations

import atexit
import ctypes
import functools
import sys
import threading
import weakref
from typing import Any, Callable

import numpy as np

from .. import forksafe
from ..codecs.chain import CodecChain
from ..dtypes import is_ml_dtype
from ..errors import CorruptDataError, DeviceMemoryError, UnsupportedFeatureError
from ..fetch import FetchedBatch
from ..placement import decode_raw, fill_item
from ..plan import Plan
from .base import check_gpu_chain
from .cpu import chunk_buffer, decode_bytes
from .gpu_layout import GpuBatchLayout, build_layout, copy_records, fetch_align, scatter_records
from .kernels import SCATTER_ITEMSIZES, get_function
from .nvcomp_batch import check, checksum_batch, copy_back, decode_batch

THREADS = 256
# nvCOMP's batched decoders work on the streams of a call in parallel, each on its own: a call of
# fewer streams than this many per SM leaves SMs idle. 4 is issue 9's "a few", not a measurement
# (no GPU has run it); the decoded-bytes and chunk bounds of Settings still cap a batch.
STREAMS_PER_SM = 4
CUDA_STREAM_LEGACY = 1  # cudaStreamLegacy (driver_types.h)
_CUPY_ML_DTYPES = frozenset({"bfloat16"})  # cupy/_core/include/cupy/bfloat16.cuh


def gpu_dtype(dtype: np.dtype) -> np.dtype:
    """Outputs on the GPU are native-endian numbers: CuPy has no other dtypes. Of ml_dtypes' types
    CuPy (from 14) has a C type, hence copies and casts, for bfloat16 only: it would hold float8,
    float4 and int2/int4 arrays but cannot even copy them."""
    if is_ml_dtype(dtype):
        if dtype.name not in _CUPY_ML_DTYPES:
            raise UnsupportedFeatureError(f"dtype {dtype.name} has no CuPy type (of the ml_dtypes types CuPy "
                                          f"knows only bfloat16): read it with device='cpu'")
    elif dtype.kind not in "biufc" or dtype.fields is not None:
        raise UnsupportedFeatureError(f"dtype {dtype} is read on the CPU only (device='cpu')")
    return dtype.newbyteorder("=")


def _host_bytes(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


class GpuDevice:
    """Runs batches through an engine: `CupyEngine` on a GPU, a NumPy stand-in in tests."""

    name = "gpu"
    batch_bytes = 256 << 20  # big batches keep nvCOMP busy; bounded by this setting
    reads_in_tasks = False  # every batch arrives staged: one copy to the device

    def __init__(self, engine: Any):
        self.engine = engine
        self.xp = engine.xp

    @property
    def batch_streams(self) -> int:
        """Chunks a batch should hold where the read has them and the byte bounds allow (the
        pipeline lets this outweigh the device's preferred batch_bytes, not a Settings bound)."""
        return STREAMS_PER_SM * self.engine.sm_count

    def __reduce__(self) -> tuple:
        from .base import get_device  # the receiving process makes its own (CUDA state is per process)

        return get_device, ("gpu",)

    @property
    def staging_alloc(self) -> Any:
        """The calling thread's page-locked staging ring (uploaded as fetched), also when a fetch
        ahead fills a slot on an I/O thread: each ring is taken from by one read at a time, which
        uploads a slot before it takes one again. Rings of the I/O threads, shared by every read
        that fetched on them, gave a slot to one read's fetch while another's batch in it still
        waited for its upload (3 threads of staged reads: 5 reads in 60 decoded wrong bytes)."""
        return self.engine.host_ring()

    def staging_align(self, chain: CodecChain) -> int:
        """Local reads land each chunk where the device may read it: no repack (see fetch_align)."""
        return fetch_align(chain)

    def takes_landed(self, n: int, chain: CodecChain) -> bool:
        """Never: nvCOMP decodes a batch whole, in one call, from pinned staging."""
        return False

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=gpu_dtype(np.dtype(dtype)))

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        if not isinstance(out, self.xp.ndarray):
            raise TypeError(f"out must be a {self.xp.__name__}.ndarray on the GPU device, not {type(out).__name__}")
        if out.shape != shape or out.dtype != gpu_dtype(np.dtype(dtype)):
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the read needs {shape} "
                             f"{gpu_dtype(np.dtype(dtype))}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")

    def decode_and_place(self, batch: FetchedBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any, report: Any = None, sole: bool = False) -> list:
        check_gpu_chain(chain)
        raw_nbytes = chain.raw_nbytes
        layout = build_layout(batch, chain,
                              lambda i: decode_bytes(chain, batch.chunk(i), chunk_buffer(_host_bytes, raw_nbytes),
                                                     batch.labels[i]),
                              self.engine.host_ring())
        eng = self.engine
        if report is not None:
            report.cpu_fallback += [batch.labels[i] for i in layout.cpu_fallback]
            report.codec_calls.update(f"nvcomp:{alg}" for alg in (*layout.streams, *layout.checksums))
            report.kernel_launches += (bool(layout.copies["size"].size) + bool(layout.moves["size"].size)
                                       + len(layout.unshuffles))
        decoded = None
        itemsize = out.dtype.itemsize
        scatter, fills = scatter_records(plan, first, first + batch.n, batch.present, chain.shape, itemsize,
                                         out.strides)
        try:
            if layout.present.any():
                work = self._decode(layout)
                rows = work[:layout.n * raw_nbytes].reshape(layout.n, raw_nbytes)
                decoded = self.xp.ascontiguousarray(decode_raw(self.xp, rows, chain, native=True))
            if len(scatter):
                eng.scatter(decoded, out, scatter, itemsize, len(chain.shape))
            if len(fills):
                eng.fill(out, fills, fill_bytes(fill, out.dtype), itemsize, len(chain.shape))
        except MemoryError as exc:  # CuPy's OutOfMemoryError: the batch's device buffers did not fit
            if isinstance(exc, DeviceMemoryError):
                raise
            raise DeviceMemoryError(
                f"the GPU ran out of memory for a batch of {batch.n} chunks ({layout.staging.nbytes} bytes staged, "
                f"{layout.n * raw_nbytes} decoded): lower gpuzarr.Settings(batch_bytes=..., batch_decoded_bytes=...) "
                f"({exc})") from exc
        if report is not None:
            report.kernel_launches += bool(len(scatter)) + bool(len(fills))
        return []  # the work is queued on the stream; finish() checks it

    def _decode(self, layout: GpuBatchLayout) -> Any:
        eng = self.engine
        staging = eng.upload(layout.staging, layout.staging_token)
        work = eng.empty(layout.work_nbytes)
        checks = layout.checksums
        if "crc32c" in checks:  # queued (and so reported) before the decodes, as the CPU checks first
            eng.checksum("crc32c", staging, checks["crc32c"], layout)
        for algorithm, table in layout.streams.items():
            eng.decompress(algorithm, staging, work, table, layout)
        if "crc32" in checks:  # gzip members: over what nvCOMP wrote, before any move
            eng.checksum("crc32", work, checks["crc32"], layout)
        if layout.copies["size"].size:
            eng.copy(staging, work, layout.copies)
        if layout.moves["size"].size:
            eng.copy(work, work, layout.moves)
        for kind, table in layout.unshuffles.items():
            eng.unshuffle(kind, work, table)
        return work

    def finish(self) -> None:
        self.engine.finish()

    def abort(self) -> None:
        self.engine.discard()


def fill_bytes(fill: Any, dtype: np.dtype) -> bytes:
    """The fill value as the output dtype's bytes, padded to 16 (the fill kernel's two u64s)."""
    return fill_item(fill, dtype).ljust(16, b"\0")


class _ThreadState:
    """One thread's: the (Decoded, layout) entries of its queued nvCOMP calls whose results are
    not checked yet, and its page-locked staging slots."""

    def __init__(self, pinned: PinnedPool):
        self.pending: list = []
        self.pinned: PinnedPool | None = pinned


class CupyEngine:
    """CuPy + nvCOMP: every call is asynchronous on the calling thread's current CuPy stream.
    State that must not be shared between threads (pinned slots, results awaiting their check)
    is kept per thread."""

    def __init__(self, device_id: int | None = None):
        import cupy

        self.xp = cupy
        self.device_id = cupy.cuda.runtime.getDevice() if device_id is None else int(device_id)
        self._local = threading.local()
        self._states: list = []  # every thread's state, released at exit
        self._states_lock = threading.Lock()
        _ENGINES.add(self)
        _close_engines_at_exit()

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None or state.pinned is None:  # a new thread, or one whose state close() released
            with self.xp.cuda.Device(self.device_id):  # its events belong to the engine's device, whatever
                pinned = PinnedPool(self.xp, slots=2)  # this thread's current one (an I/O thread's is device 0)
            state = self._local.state = _ThreadState(pinned)
            with self._states_lock:
                self._states.append(state)
        return state

    @forksafe.memo
    def sm_count(self) -> int:
        """The device's streaming multiprocessors (one attribute query, then cached)."""
        runtime = self.xp.cuda.runtime
        return int(runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, self.device_id))

    def close(self) -> None:
        """Let go of every thread's pinned buffers, events and unchecked device buffers now, while
        CUDA is still up (at exit, see _close_engines_at_exit); a later read starts afresh."""
        with self._states_lock:
            states, self._states = self._states, []
        for state in states:
            state.pending, state.pinned = [], None

    @property
    def stream(self) -> Any:
        return self.xp.cuda.get_current_stream()

    @property
    def stream_handle(self) -> int:
        """The current stream as nvCOMP's C API is handed it: CuPy's null stream (ptr 0) as
        cudaStreamLegacy, which is what it is in CuPy; 0 itself would mean the per-thread
        default stream to a library built with per-thread default streams, and nvCOMP links
        its CUDA runtime statically, so its build cannot be told from outside."""
        return self.stream.ptr or CUDA_STREAM_LEGACY

    def empty(self, nbytes: int) -> Any:
        return self.xp.empty(nbytes, dtype=self.xp.uint8)

    def host_ring(self) -> Callable[[int], tuple[np.ndarray, Any]]:
        """The calling thread's ring of page-locked staging slots, as take(nbytes) -> (the next
        slot, its event), callable on any thread (waits only if that slot's previous copy is
        still running)."""
        return self._state().pinned.take

    def upload(self, host: np.ndarray, event: Any) -> Any:
        """One asynchronous copy of a staging slot from `host_ring` (event: its slot's), or of
        pageable memory (event None: CUDA has copied it before this returns)."""
        device = self.empty(host.nbytes)
        device.set(host, stream=self.stream)
        if event is not None:
            event.record(self.stream)  # the slot is reusable once this copy is done
        return device

    def decompress(self, algorithm: str, staging: Any, work: Any, table: dict, layout: GpuBatchLayout) -> None:
        """One batched C-API call for the batch's streams of `algorithm`, on the current stream;
        its sizes and statuses are checked two batches later (see `lagged`) or by finish()."""
        from .nvcomp_capi import load

        try:
            decoded = decode_batch(self.xp, load(), algorithm, staging, work, table, layout.labels, self.stream_handle)
        except (MemoryError, RuntimeError, ValueError) as exc:
            raise decode_error(exc, algorithm, table, layout) from exc
        self._queue(decoded, layout)

    def _queue(self, result: Any, layout: GpuBatchLayout) -> None:
        """Keep a queued nvCOMP call's results until checked, their copy to the host queued right
        behind the call; check those of batches before the previous one now (waiting for their
        copies alone, not for the stream), which lets go of their buffers."""
        state = self._state()
        copy_back(self.xp, result)
        state.pending.append((result, layout))
        old, state.pending = lagged(state.pending)
        check(self.xp, [d for d, _ in old])

    def checksum(self, model: str, area: Any, table: dict, layout: GpuBatchLayout) -> None:
        """One batched nvCOMP CRC call over the messages of `table` in `area` (staging or work),
        compared on the device; read back with the decode statuses (see `decompress`)."""
        from .nvcomp_capi import load

        try:
            result = checksum_batch(self.xp, load(), model, area, table, layout.labels, self.stream_handle)
        except (MemoryError, RuntimeError) as exc:  # the call reads no data: never the data's fault
            error = decode_error(exc, model, {"src_size": table["size"], "chunk": table["chunk"]}, layout)
            raise (error if isinstance(error, DeviceMemoryError) else exc) from exc
        self._queue(result, layout)

    def copy(self, src: Any, dst: Any, table: dict) -> None:
        """Byte copies as 1-d windows of the scatter kernel (itemsize 1): one launch per table, a
        batched memcpy that moves 16-byte words where source and destination agree modulo 16
        (threads sized for that; narrower words loop)."""
        self._launch_scatter(src, dst, copy_records(table), 1, 1, -(-int(table["size"].max()) // 16))

    def unshuffle(self, kind: int, work: Any, table: dict) -> None:
        from ..blosc_frames import SHUFFLE_BIT

        entry = "gpz_bitunshuffle_batch" if kind == SHUFFLE_BIT else "gpz_byteunshuffle_batch"
        fn = get_function("bitshuffle.cu", entry, self.device_id)
        n = table["size"].size
        with self.stream:  # RawKernel launches on the current stream
            args = [self.xp.asarray(table[k]) for k in ("src", "dst", "size", "typesize")]
            fn((min(n, 65535),), (THREADS,), (work, work, *args, np.int64(n)))

    def scatter(self, decoded: Any, out: Any, records: np.ndarray, itemsize: int, ndim: int) -> None:
        from .kernels import SCATTER_REC_COUNT

        largest = int(np.prod(records[:, SCATTER_REC_COUNT:SCATTER_REC_COUNT + ndim], axis=1).max())
        self._launch_scatter(decoded, out, records, itemsize, ndim, largest)

    def fill(self, out: Any, records: np.ndarray, value: bytes, itemsize: int, ndim: int) -> None:
        from .kernels import SCATTER_REC_COUNT

        _check_itemsize(itemsize)
        fn = get_function("scatter.cu", f"gpz_fill_{itemsize}", self.device_id)
        largest = int(np.prod(records[:, SCATTER_REC_COUNT:SCATTER_REC_COUNT + ndim], axis=1).max())
        lo, hi = np.frombuffer(value, dtype="<u8")
        with self.stream:
            recs = self.xp.asarray(records)
            fn(_grid(len(records), largest), (THREADS,),
               (out, recs, np.int64(len(records)), np.int32(ndim), lo, hi))

    def _launch_scatter(self, src: Any, dst: Any, records: np.ndarray, itemsize: int, ndim: int,
                        largest: int) -> None:
        _check_itemsize(itemsize)
        fn = get_function("scatter.cu", f"gpz_scatter_{itemsize}", self.device_id)
        with self.stream:
            recs = self.xp.asarray(records)
            fn(_grid(len(records), largest), (THREADS,), (src, dst, recs, np.int64(len(records)), np.int32(ndim)))

    def finish(self) -> None:
        """Check every decoded size and status nvCOMP reported for this thread's read (waits for
        the copies queued behind its calls; the read's last launches may still run after)."""
        state = self._state()
        pending, state.pending = state.pending, []
        check(self.xp, [d for d, _ in pending])

    def discard(self) -> None:
        """A read failed: wait for what it queued on the stream (nothing of it may write into
        `out`, or copy into host memory freed here, once the read has raised), then forget its
        unchecked results so the next read does not inherit them."""
        state = self._state()
        try:
            self.stream.synchronize()
        except Exception:  # noqa: BLE001 - a CUDA error that failed the read is being raised already
            pass
        state.pending = []


_ENGINES: weakref.WeakSet = weakref.WeakSet()  # every CupyEngine alive, closed at exit


@functools.cache
def _close_engines_at_exit() -> None:
    """Registered when the first engine is made, after CuPy is imported, so it runs before CuPy's
    own exit handlers (atexit runs the last registered first) and long before the interpreter's
    teardown would free our buffers in any order, CUDA's runtime perhaps already unloaded."""
    atexit.register(_close_engines)


def _close_engines() -> None:
    for engine in list(_ENGINES):
        engine.close()


def lagged(pending: list, keep: int = 2) -> tuple[list, list]:
    """(entries of all but the last `keep` batches, those of the last `keep`): each (decoded,
    layout) entry holds its batch's device buffers until its sizes are checked, so a read holds
    at most the output and `keep` batches of scratch, however many batches it has."""
    batches: list = []
    for _, layout in pending:
        if not batches or batches[-1] is not layout:
            batches.append(layout)
    recent = batches[-keep:]
    cut = len(pending) - sum(1 for _, layout in pending if any(layout is b for b in recent))
    return pending[:cut], pending[cut:]


def decode_error(exc: BaseException, algorithm: str, table: dict, layout: GpuBatchLayout) -> BaseException:
    """What an nvCOMP failure on a batch means: the GPU out of memory (nvCOMP's own scratch is
    allocated outside CuPy's pool) is no data error, but a batch too large, named with the
    settings that bound it; any other CUDA error comes from elsewhere (an earlier launch, a
    sticky context error) and is raised as it is; the rest is the data's fault."""
    text = str(exc)
    streams, compressed = int(table["src_size"].size), int(table["src_size"].sum())
    if "out of memory" in text.lower() or "MemoryAllocation" in text:
        return DeviceMemoryError(
            f"the GPU ran out of memory decoding a batch of {streams} {algorithm} streams ({compressed} compressed "
            f"bytes, {layout.n * layout.raw_nbytes} decoded): lower gpuzarr.Settings(batch_bytes=..., "
            f"batch_decoded_bytes=...) ({exc})")
    if isinstance(exc, MemoryError):
        return DeviceMemoryError(f"the GPU ran out of memory decoding a batch of {streams} {algorithm} streams: "
                                 f"lower gpuzarr.Settings(batch_bytes=..., batch_decoded_bytes=...) ({exc})")
    if "cudaerror" in text.lower() or "cuda_error" in text.lower():
        return exc
    if isinstance(exc, RuntimeError) and text.startswith("nvcompBatched") and not any(s in text for s in DATA_STATUSES):
        return exc  # the C API refused the call itself (invalid value, not supported, ...): no data error
    chunk = int(table["chunk"][0])
    return CorruptDataError(f"{layout.labels[chunk]}…: nvCOMP could not decode a batch of {streams} {algorithm} "
                            f"streams ({exc})")


# statuses of a whole nvCOMP call that the streams' bytes can cause; any other (nvcompErrorInvalidValue,
# nvcompErrorNotSupported on a GPU nvCOMP does not support, nvcompErrorAlignment, ...) is no data error
DATA_STATUSES = ("nvcompErrorCannotDecompress", "nvcompErrorBadChecksum", "nvcompErrorWrongHeaderLength",
                 "nvcompErrorWrongInputLength", "nvcompErrorOutputBufferTooSmall", "nvcompErrorChunkSizeTooLarge")


def _check_itemsize(itemsize: int) -> None:
    if itemsize not in SCATTER_ITEMSIZES:
        raise UnsupportedFeatureError(f"items of {itemsize} bytes are placed on the CPU only")


def _grid(n_records: int, largest: int) -> tuple[int, int, int]:
    return (max(1, min(-(-largest // THREADS), 1024)), max(1, min(n_records, 65535)), 1)


class PinnedPool:
    """A bounded ring of page-locked host buffers, grown on demand, reused once their copy is done."""

    def __init__(self, cupy: Any, slots: int):
        self._cp = cupy
        # [pinned memory, its capacity in bytes, the event recorded after its last copy]
        self._slots: list[list[Any]] = [[None, 0, cupy.cuda.Event(block=True, disable_timing=True)]
                                        for _ in range(slots)]
        self._next = 0

    def take(self, nbytes: int) -> tuple[np.ndarray, Any]:
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        memory, capacity, event = slot
        event.synchronize()  # the copy that last used this slot has finished
        if memory is None or capacity < nbytes:
            slot[0], slot[1] = self._cp.cuda.alloc_pinned_memory(max(nbytes, 1)), max(nbytes, 1)
        return np.frombuffer(slot[0], dtype=np.uint8, count=nbytes), event


def usable_gpu() -> tuple[bool, str]:
    """(True, "") when CuPy can allocate on a GPU and nvCOMP imports; else (False, why). Where
    there is no CUDA driver at all, CuPy is not imported: that costs ~0.8 s (and its memory) in
    every process that opens an array with device "auto", for nothing."""
    missing = _cuda_driver_missing()
    if missing:
        return False, f"no usable GPU: {missing}"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "CuPy finds no CUDA device"
        cupy.empty(1, dtype=cupy.uint8)
        from nvidia import nvcomp
    except Exception as exc:  # import errors, CUDARuntimeError, driver too old, …
        return False, f"no usable GPU: {type(exc).__name__}: {exc}".strip()
    problem = nvcomp_version_problem(getattr(nvcomp, "__version__", "unknown"))
    if problem:
        return False, problem
    try:
        from .nvcomp_capi import load

        load()  # the batched C API: every symbol, typed
    except (OSError, AttributeError, ImportError) as exc:
        return False, f"nvCOMP's C library is unusable: {type(exc).__name__}: {exc}"
    return True, ""


_CUDA_DRIVER = {"win32": "nvcuda.dll", "darwin": None}.get(sys.platform, "libcuda.so.1")


def _cuda_driver_missing() -> str | None:
    """Why there is no CUDA driver to load (the library every CUDA program needs), or None. Only
    loaded, never initialised: CuPy says what it finds on a machine that has one."""
    if _CUDA_DRIVER is None:
        return f"CUDA has no driver on {sys.platform}"
    try:
        ctypes.CDLL(_CUDA_DRIVER)
    except OSError as exc:
        return f"no CUDA driver ({exc})"
    return None


NVCOMP_MIN = (6, 0)  # the batched C API with *DecompressOpts_t and GetRequiredAlignments (nvcomp_capi): 6.0 on


def nvcomp_version_problem(version: str) -> str | None:
    """Why this nvCOMP cannot serve gpuzarr, or None."""
    parts = version.split(".")
    try:
        found = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return f"nvCOMP reports version {version!r}; gpuzarr needs {NVCOMP_MIN[0]}.{NVCOMP_MIN[1]} or newer"
    if found < NVCOMP_MIN:
        return (f"nvCOMP {version} is too old: gpuzarr needs {NVCOMP_MIN[0]}.{NVCOMP_MIN[1]} or newer "
                f'(pip install -U "gpuzarr[cuda12]")')
    return None
