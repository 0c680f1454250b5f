"""Data-loader helpers on top of `Array.read_windows`: a map-style dataset of same-shaped patches
whose batches are ONE batched read each (chunks shared by patches are decoded once), window sets
held as one int64 array (millions of windows cost megabytes, not millions of tuples), and a
prefetching generator that overlaps the next reads with the consumer's work.

torch is optional and only imported when a tensor is asked for (`as_torch=True`, `collate` on a
list)."""

from __future__ import annotations

import functools
import operator
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .dtypes import is_ml_dtype
from .plan import window_starts

EDGES = ("error", "pad", "shift")
TORCH_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")  # same bits in torch
Shape = tuple[int, ...]


# --------------------------------------------------------------------------- windows


class Windows:
    """Same-shaped boxes in array coordinates: an (n, ndim) int64 array of starts plus one shape.

    `w[i]` is a tuple of slices, `w[index_array]` / `w[a:b]` a sub-set. Starts may be negative or
    reach past the array (what `edge` in PatchDataset then decides): coordinates are absolute,
    never counted from the end as in Python slicing."""

    __slots__ = ("starts", "shape")

    def __init__(self, starts: Any, shape: Sequence[int]):
        shape = tuple(operator.index(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"window shape {shape} must be positive along every axis")
        self.starts = window_starts(starts, len(shape), "Windows")
        self.shape = shape

    @property
    def stops(self) -> np.ndarray:
        return self.starts + np.asarray(self.shape, dtype=np.int64)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: Any) -> tuple[slice, ...] | Windows:
        if isinstance(index, (int, np.integer)):
            return tuple(slice(a, a + w) for a, w in zip(self.starts[index].tolist(), self.shape))
        return Windows(self.starts[index], self.shape)

    def selections(self) -> list[tuple[slice, ...]]:
        """The windows as `read_batch` takes them."""
        return [tuple(map(slice, a, b)) for a, b in zip(self.starts.tolist(), self.stops.tolist())]

    def __repr__(self) -> str:
        return f"Windows({len(self)} of shape {self.shape})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Windows) and self.shape == other.shape
                and np.array_equal(self.starts, other.starts))


def as_windows(windows: Windows | Sequence[Any], shape: Shape) -> Windows:
    """A Windows from a list of tuples of step-1 slices (None: 0 / the array's extent)."""
    if isinstance(windows, Windows):
        if windows.ndim != len(shape):
            raise ValueError(f"windows are {windows.ndim}-D, the array is {len(shape)}-D (shape {shape})")
        return windows
    if len(windows) == 0:
        raise ValueError("no windows given")
    bounds = np.array([_bounds(w, shape, i) for i, w in enumerate(windows)], dtype=np.int64)  # (n, ndim, 2)
    extents = bounds[:, :, 1] - bounds[:, :, 0]
    differ = np.flatnonzero((extents != extents[0]).any(axis=1))
    if differ.size:
        i = int(differ[0])
        raise ValueError(f"window {i} {windows[i]} has shape {tuple(extents[i].tolist())}, window 0 "
                         f"has {tuple(extents[0].tolist())}: all windows must have one shape")
    return Windows(bounds[:, :, 0], extents[0].tolist())


def _bounds(window: Any, shape: Shape, i: int) -> list[tuple[int, int]]:
    if isinstance(window, slice):
        window = (window,)
    if not isinstance(window, tuple) or len(window) != len(shape) \
            or not all(isinstance(s, slice) and s.step in (None, 1) for s in window):
        raise ValueError(f"window {i} {window!r}: expected a tuple of {len(shape)} slices with step 1 "
                         f"(the array's shape is {shape})")
    return [(0 if s.start is None else operator.index(s.start), n if s.stop is None else operator.index(s.stop))
            for s, n in zip(window, shape)]


def random_windows(shape: Sequence[int], window: Sequence[int], n: int, *,
                   seed: int | np.random.Generator) -> Windows:
    """`n` windows placed uniformly and independently, each wholly inside `shape`; the same
    `seed` gives the same windows."""
    shape, window = _shape_pair(shape, window)
    too_big = [a for a, (s, w) in enumerate(zip(shape, window)) if w > s]
    if too_big:
        raise ValueError(f"window {window} does not fit in shape {shape} along axis {too_big[0]}")
    if operator.index(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    room = np.asarray(shape, dtype=np.int64) - np.asarray(window, dtype=np.int64) + 1
    return Windows(np.random.default_rng(seed).integers(0, room, size=(n, len(shape))), window)


def grid_windows(shape: Sequence[int], window: Sequence[int], *, stride: Sequence[int] | None = None,
                 partial: bool = False) -> Windows:
    """Windows at starts 0, stride, 2*stride… on every axis (stride defaults to the window: a
    tiling), in C order. Windows crossing the far edge are dropped, so up to window-1 elements
    at the end of an axis are not covered; `partial=True` adds, per axis, the windows that
    reach the edge (as few as cover it), to be read with edge="pad" (or "shift": moved back
    inside, overlapping their neighbour)."""
    shape, window = _shape_pair(shape, window)
    stride = window if stride is None else tuple(operator.index(s) for s in stride)
    if len(stride) != len(shape) or any(s < 1 for s in stride):
        raise ValueError(f"stride {stride} must be {len(shape)} positive integers")
    axes = [np.arange(0, min(n, max(n - w, 0) + s) if partial else n - w + 1, s, dtype=np.int64)
            for n, w, s in zip(shape, window, stride)]
    starts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    return Windows(starts, window)


def _shape_pair(shape: Sequence[int], window: Sequence[int]) -> tuple[Shape, Shape]:
    shape, window = tuple(operator.index(s) for s in shape), tuple(operator.index(w) for w in window)
    if len(shape) != len(window):
        raise ValueError(f"window {window} and shape {shape} differ in dimensions")
    return shape, window


# --------------------------------------------------------------------------- dataset


class PatchDataset:
    """A map-style dataset (PyTorch's protocol; torch itself is not needed) of same-shaped patches.

    `__getitems__` reads a whole batch with one `read_windows` call and returns it stacked, shape
    (batch, *window); torch's DataLoader calls it when it exists, then hands the stacked batch
    whole to `collate_fn`: pass `collate_fn=gpuzarr.loader.collate` (torch's default collate
    raises TypeError on a tensor, and converts a NumPy batch row by row and re-stacks it: a copy).

    `edge` decides what a window crossing the array's edge gets: "error" (refused here, naming
    it), "pad" (the elements outside are the array's fill value; read as one batched read of the
    windows moved inside, then the overlap copied into a filled batch) or "shift" (the window
    is moved inside, here, once: `self.windows` are the windows read; refused for a window
    larger than the array). `device`: the device to read on (None: the array's). `as_torch`:
    batches are torch tensors, sharing memory with the read (see `to_torch`)."""

    def __init__(self, array: Any, windows: Windows | Sequence[Any], *, device: Any = None,
                 edge: str = "error", as_torch: bool = False):
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, not {edge!r}")
        shape = tuple(array.shape)
        windows = as_windows(windows, shape)
        if edge == "error":
            _check_inside(windows, shape)
        elif edge == "shift":
            windows = _shift_inside(windows, shape)
        if as_torch:
            _check_torch_dtype(array.dtype)
        self.array, self.windows, self.device, self.edge, self.as_torch = array, windows, device, edge, as_torch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([operator.index(index)])[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        index = np.asarray(indices)
        if index.size == 0:  # (np.asarray([]) is float64): no windows, an empty batch
            index = index.astype(np.int64).reshape(0)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise TypeError(f"indices must be a sequence of integers, got {indices!r}")
        windows = self.windows[index]
        batch = self._read_padded(windows) if self.edge == "pad" else self._read(windows)
        return to_torch(batch) if self.as_torch else batch

    def _read(self, windows: Windows) -> Any:
        return self.array.read_windows(windows.starts, windows.shape, device=self.device)

    def _read_padded(self, windows: Windows) -> Any:
        """One read of the windows clipped to the array and moved inside; windows that needed
        neither come back as read, the others get their overlap copied into fill."""
        shape = np.asarray(self.array.shape, dtype=np.int64)
        extent = np.minimum(windows.shape, shape)
        at = np.clip(windows.starts, 0, shape - extent)
        got = self._read(Windows(at, extent.tolist()))
        whole = (at == windows.starts).all(axis=1) & bool((extent == windows.shape).all())
        if whole.all():
            return got
        xp = _namespace(got)
        fill = np.asarray(self.array.meta.fill_value, dtype=got.dtype)[()]  # the metadata's byte order may differ
        out = xp.full((len(windows), *windows.shape), fill, dtype=got.dtype)
        if whole.any():
            rows = xp.asarray(np.flatnonzero(whole))
            out[rows] = got[rows]
        lo, hi = np.maximum(windows.starts, 0), np.minimum(windows.stops, shape)
        for i in np.flatnonzero(~whole & (hi > lo).all(axis=1)).tolist():
            src = tuple(map(slice, (lo[i] - at[i]).tolist(), (hi[i] - at[i]).tolist()))
            dst = tuple(map(slice, (lo[i] - windows.starts[i]).tolist(), (hi[i] - windows.starts[i]).tolist()))
            out[(i, *dst)] = got[(i, *src)]
        return out

    def __repr__(self) -> str:
        return (f"PatchDataset({len(self)} windows of {self.windows.shape}, edge={self.edge!r}, "
                f"array={self.array!r})")


def _check_inside(windows: Windows, shape: Shape) -> None:
    bad = np.flatnonzero(((windows.starts < 0) | (windows.stops > np.asarray(shape))).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise IndexError(f"window {i} {windows[i]} crosses the edge of the array of shape {shape} "
                         f"({bad.size} windows do); pass edge='pad' or edge='shift'")


def _shift_inside(windows: Windows, shape: Shape) -> Windows:
    over = [a for a, (w, n) in enumerate(zip(windows.shape, shape)) if w > n]
    if over:
        raise ValueError(f"edge='shift': the window shape {windows.shape} is larger than the array "
                         f"{shape} along axis {over[0]}; use edge='pad'")
    return Windows(np.clip(windows.starts, 0, np.asarray(shape) - windows.shape), windows.shape)


def _namespace(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


# --------------------------------------------------------------------------- torch


def to_torch(batch: Any) -> Any:
    """A torch tensor sharing `batch`'s memory: `torch.from_numpy` for NumPy, `torch.from_dlpack`
    for CuPy (no copy, on the GPU). Copies only where torch cannot share: a non-native byte
    order or read-only NumPy array is copied; uint16/uint32 are widened to int32/int64 when the
    installed torch lacks them (torch < 2.3); anything else torch lacks (uint64 there, strings,
    structured) raises TypeError."""
    import torch

    if is_ml_dtype(batch.dtype):
        return _ml_to_torch(batch, torch)
    if isinstance(batch, np.ndarray):
        if not batch.dtype.isnative:
            batch = batch.astype(batch.dtype.newbyteorder("="))
        elif not batch.flags.writeable:
            batch = batch.copy()
        return torch.from_numpy(_widened(batch, "numpy"))
    return torch.from_dlpack(_widened(batch, "dlpack"))


def _ml_to_torch(batch: Any, torch: Any) -> Any:
    """ml_dtypes' numbers (bfloat16, float8_*) cross as same-size integers, then are viewed as
    torch's type of the same name: no copy, whatever DLPack or torch.from_numpy know of them."""
    target = getattr(torch, batch.dtype.name, None) if batch.dtype.name in TORCH_ML_DTYPES else None
    if target is None:
        raise TypeError(f"torch {torch.__version__} has no dtype for {batch.dtype.name}")
    ints = batch.view(f"i{batch.dtype.itemsize}")
    return (torch.from_numpy(ints) if isinstance(ints, np.ndarray) else torch.from_dlpack(ints)).view(target)


def _widened(batch: Any, path: str) -> Any:
    wider = _torch_widening(batch.dtype.newbyteorder("="), path)
    return batch if wider is None else batch.astype(wider)


@functools.lru_cache(maxsize=None)
def _torch_widening(dtype: np.dtype, path: str) -> np.dtype | None:
    """None when torch takes `dtype` through `path` (asked once, on an empty array: torch's own
    answer, whatever its version), else the wider dtype to convert to."""
    import torch

    probe = np.zeros(1, dtype)
    try:
        torch.from_numpy(probe) if path == "numpy" else torch.from_dlpack(probe)
        return None
    except (TypeError, RuntimeError, BufferError) as exc:
        wider = {np.dtype("uint16"): np.dtype("int32"), np.dtype("uint32"): np.dtype("int64")}.get(dtype)
        if wider is None:
            raise TypeError(f"torch {torch.__version__} has no dtype for {dtype} ({exc})") from None
        return wider


def _check_torch_dtype(dtype: np.dtype) -> None:
    dtype = np.dtype(dtype)
    if is_ml_dtype(dtype):
        _ml_to_torch(np.zeros(1, dtype), __import__("torch"))
    else:
        _torch_widening(dtype.newbyteorder("="), "numpy")


def collate(batch: Any) -> Any:
    """The `collate_fn` for a DataLoader over a PatchDataset: the dataset's `__getitems__`
    already returns the stacked batch, which passes through unchanged. A list of patches
    (from a wrapper without `__getitems__`, e.g. ConcatDataset) is stacked."""
    if not isinstance(batch, list):
        return batch
    first = batch[0]
    if isinstance(first, np.ndarray):
        return np.stack(batch)
    if type(first).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.stack(batch)
    import torch

    return torch.stack(batch)


# --------------------------------------------------------------------------- prefetch

_ITEM, _DONE, _ERROR = range(3)


def prefetch(iterable: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Yield `iterable`'s items while a background thread already reads the next `depth`.

    An exception raised by the iterable is raised here, after the items before it. Closing the
    generator early (break, `close()`, garbage collection) stops the thread: it finishes the item
    it is reading, at most, and the iterable is closed on it. GPU items (CuPy arrays, CUDA
    tensors): from the second item on, the thread reads on its own non-blocking CUDA stream; the
    consumer's current stream waits on an event recorded after each item, and the thread's stream
    waits, before each read, on one recorded on the consumer's stream when it asked for the next
    item, so memory the consumer released before asking is reused only after its work on it."""
    depth = operator.index(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return _prefetched(iter(iterable), depth, _StreamHandoff())


def _prefetched(items: Iterator[Any], depth: int, handoff: _StreamHandoff) -> Iterator[Any]:
    results: queue.SimpleQueue = queue.SimpleQueue()
    slots, stop = threading.Semaphore(depth), threading.Event()
    worker = threading.Thread(target=_produce, args=(items, results, slots, stop, handoff),
                              name="gpuzarr-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            handoff.release()
            kind, value, event = results.get()
            slots.release()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            handoff.acquire(event)
            yield value
    finally:
        stop.set()
        slots.release()  # wakes a worker waiting for a slot: it sees `stop` and ends
        worker.join()


def _produce(items: Iterator[Any], results: queue.SimpleQueue, slots: threading.Semaphore,
             stop: threading.Event, handoff: _StreamHandoff) -> None:
    try:
        while True:
            slots.acquire()
            if stop.is_set():
                return
            with handoff.reading():
                try:
                    item = next(items)
                except StopIteration:
                    results.put((_DONE, None, None))
                    return
                event = handoff.ready(item)
            results.put((_ITEM, item, event))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        results.put((_ERROR, exc, None))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


class _StreamHandoff:
    """Orders GPU work between prefetch's thread and its consumer, both ways, with CUDA events.
    Inert until the first GPU item: nothing touches CUDA for host data. `cuda`: the
    `cupy.cuda` module (a stand-in in tests); looked up at the first GPU item when None."""

    def __init__(self, cuda: Any = None):
        self.cuda = cuda
        self.stream: Any = None  # the thread's own stream, made at the first GPU item
        self.consumer_done: Any = None  # recorded on the consumer's stream as it asks for an item

    # ---- the prefetch thread
    @contextmanager
    def reading(self) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        if self.consumer_done is not None:
            self.stream.wait_event(self.consumer_done)
        with self.stream:
            yield

    def ready(self, item: Any) -> Any:
        """The event the consumer waits on before using `item` (None: not GPU data)."""
        if self.stream is not None:
            return self.stream.record()
        if not _on_gpu(item):
            return None
        if self.cuda is None:
            import cupy

            self.cuda = cupy.cuda
        self.stream = self.cuda.Stream(non_blocking=True)  # for the next reads
        return self.cuda.get_current_stream().record()  # this one ran on the thread's default stream

    # ---- the consumer
    def release(self) -> None:
        if self.stream is not None:
            self.consumer_done = self.cuda.get_current_stream().record()

    def acquire(self, event: Any) -> None:
        if event is not None:
            self.cuda.get_current_stream().wait_event(event)


def _on_gpu(item: Any) -> bool:
    """A CuPy array or CUDA tensor, or a tuple/list holding one."""
    parts = item if isinstance(item, (tuple, list)) else (item,)
    return any(type(p).__module__.split(".")[0] == "cupy" or getattr(p, "is_cuda", False) is True
               for p in parts)


__all__ = ["Windows", "as_windows", "random_windows", "grid_windows", "PatchDataset", "collate", "to_torch",
           "prefetch", "EDGES"]
