"""gpuzarr.loader: windows, PatchDataset (one read_batch per batch, the edge policies), prefetch,
torch interop. Every patch is compared bit for bit with NumPy slicing of the source."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.devices.gpu import usable_gpu
from gpuzarr.loader import (
    PatchDataset,
    _StreamHandoff,
    Windows,
    _prefetched,
    as_windows,
    collate,
    grid_windows,
    prefetch,
    random_windows,
    to_torch,
)
from gpuzarr.sample import sample_data, write_sharded

SHAPE = (150, 130)
FILL = -7


def bits(a) -> bytes:
    """Shape, value type and bytes in native order: 'bit-identical' whatever the byte order."""
    a = np.asarray(a)
    return repr((a.shape, a.dtype.newbyteorder("="))).encode() + np.ascontiguousarray(
        a.astype(a.dtype.newbyteorder("="))).tobytes()


def assert_same(got, want, what: str = "") -> None:
    assert bits(got) == bits(want), f"{what}: {np.asarray(got)!r} != {np.asarray(want)!r}"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A gpuzarr.sample array: uint16, shards 64², inner chunks 16², edge chunks partial."""
    path = tmp_path_factory.mktemp("loader") / "sharded"
    data = sample_data(SHAPE)
    write_sharded(str(path), data, (64, 64), (16, 16))
    return gpuzarr.open(str(path), device="cpu"), data


@pytest.fixture(scope="module")
def holey(tmp_path_factory):
    """A zarr-python array: big-endian int16, fill value -7, chunk (0, 1) never written."""
    path = tmp_path_factory.mktemp("loader") / "holey"
    z = zarr.create_array(store=str(path), shape=(70, 50), chunks=(16, 16), dtype=">i2", fill_value=FILL,
                          serializer=zarr.codecs.BytesCodec(endian="big"), zarr_format=3)
    data = sample_data((70, 50)).astype(">i2")
    z[:16, :16] = data[:16, :16]
    z[16:] = data[16:]
    expected = np.asarray(z[:])  # the source, with the missing chunk as fill
    assert (expected[:16, 16:32] == FILL).all()
    return gpuzarr.open(str(path), device="cpu"), expected


def counting(arr, calls: list):
    """Records every batched read (read_windows: its windows as tuples of slices) on this instance."""
    read_windows = arr.read_windows

    def wrapped(starts, shape, **kw):
        calls.append([tuple(slice(a, a + n) for a, n in zip(row, shape)) for row in np.asarray(starts).tolist()])
        return read_windows(starts, shape, **kw)

    arr.read_windows = wrapped
    return arr


def padded_reference(source: np.ndarray, fill, window: tuple[slice, ...]) -> np.ndarray:
    """np.pad far enough for the window, then the window shifted by the padding before."""
    pad = [(max(0, -s.start), max(0, s.stop - n)) for s, n in zip(window, source.shape)]
    big = np.pad(source, pad, constant_values=np.asarray(fill, source.dtype))
    return big[tuple(slice(s.start + before, s.stop + before) for s, (before, _) in zip(window, pad))]


# --------------------------------------------------------------------------- windows


def test_windows_index_to_slices_and_subsets():
    w = Windows([[0, 5], [10, 20], [-3, 7]], (4, 6))
    assert len(w) == 3 and w.ndim == 2 and w.starts.dtype == np.int64
    assert w[1] == (slice(10, 14), slice(20, 26))
    assert w[-1] == (slice(-3, 1), slice(7, 13))
    sub = w[np.array([2, 0])]
    assert isinstance(sub, Windows) and sub.selections() == [w[2], w[0]]
    assert w[1:] == Windows([[10, 20], [-3, 7]], (4, 6))
    assert w.selections() == [w[0], w[1], w[2]]
    with pytest.raises(IndexError):
        w[3]


@pytest.mark.parametrize("starts, shape, match", [
    ([[0.5, 1]], (2, 2), "integer"),
    ([[0, 1, 2]], (2, 2), r"\(n, 2\)"),
    ([[0, 1]], (2, 0), "positive"),
    (np.array([[2**64 - 1, 0]], np.uint64), (2, 2), "fit in int64"),  # it wrapped to -1: a window padded with data
])
def test_windows_refuse_bad_starts_and_shapes(starts, shape, match):
    with pytest.raises(ValueError, match=match):
        Windows(starts, shape)


def test_as_windows_reads_slices_and_names_the_bad_window():
    w = as_windows([(slice(None), slice(2, 5)), (slice(0, 10), slice(-1, 2))], (10, 20))
    assert w == Windows([[0, 2], [0, -1]], (10, 3))
    assert as_windows([slice(3, 5)], (9,)) == Windows([[3]], (2,))
    with pytest.raises(ValueError, match=r"window 1 .* has shape \(2, 3\), window 0 has \(2, 2\)"):
        as_windows([(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(0, 3))], (10, 10))
    with pytest.raises(ValueError, match="window 0 .*step 1"):
        as_windows([(slice(0, 4, 2), slice(0, 2))], (10, 10))
    with pytest.raises(ValueError, match="window 0 .*2 slices"):
        as_windows([(3, slice(0, 2))], (10, 10))
    with pytest.raises(ValueError, match="no windows"):
        as_windows([], (10, 10))
    with pytest.raises(ValueError, match="3-D"):
        as_windows(Windows([[0, 0, 0]], (1, 1, 1)), (10, 10))


def test_random_windows_lie_inside_and_depend_only_on_the_seed():
    shape, window = (50, 40, 7), (10, 40, 3)
    w = random_windows(shape, window, 5000, seed=3)
    assert len(w) == 5000 and w.shape == window
    assert (w.starts >= 0).all() and (w.stops <= shape).all()
    # uniform over every possible start: each one turns up, the extremes included
    assert [len(np.unique(w.starts[:, a])) for a in range(3)] == [41, 1, 5]
    assert w == random_windows(shape, window, 5000, seed=3)
    assert w == random_windows(shape, window, 5000, seed=np.random.default_rng(3))
    assert w != random_windows(shape, window, 5000, seed=4)
    assert len(random_windows(shape, window, 0, seed=0)) == 0
    with pytest.raises(ValueError, match="axis 2"):
        random_windows(shape, (1, 1, 8), 3, seed=0)


def _coverage(shape, windows: Windows) -> np.ndarray:
    count = np.zeros(shape, int)
    for i in range(len(windows)):
        count[windows[i]] += 1  # crossing windows: NumPy clips at the edge
    return count


def test_grid_windows_tile_what_fits_and_partial_covers_the_rest():
    shape = (70, 45)
    tiles = grid_windows(shape, (16, 15))
    assert len(tiles) == 4 * 3 and (tiles.stops <= shape).all()
    assert tiles[0] == (slice(0, 16), slice(0, 15)) and tiles[1] == (slice(0, 16), slice(15, 30))  # C order
    count = _coverage(shape, tiles)
    assert (count[:64, :45] == 1).all() and (count[64:] == 0).all()
    partial = grid_windows(shape, (16, 15), partial=True)
    assert len(partial) == 5 * 3
    assert (_coverage(shape, partial) == 1).all()
    assert (partial.starts[:, 0].max(), partial.stops[:, 0].max()) == (64, 80)


@pytest.mark.parametrize("n, w, s", [(10, 4, 2), (10, 4, 3), (11, 4, 3), (10, 2, 20), (3, 4, 4), (4, 4, 1)])
def test_grid_windows_partial_uses_as_few_windows_as_cover(n, w, s):
    starts = grid_windows((n,), (w,), stride=(s,), partial=True).starts[:, 0]
    assert starts[0] == 0 and (np.diff(starts) == s).all() and (starts < n).all()
    assert starts[-1] + w >= n or starts[-1] + s >= n  # the edge is reached, or the next start is outside
    assert len(starts) == 1 or starts[-2] + w < n  # and the last window is needed
    inside = grid_windows((n,), (w,), stride=(s,)).starts[:, 0]
    assert list(inside) == list(range(0, n - w + 1, s))


def test_grid_windows_refuses_bad_strides():
    with pytest.raises(ValueError, match="stride"):
        grid_windows((10, 10), (2, 2), stride=(0, 1))
    with pytest.raises(ValueError, match="dimensions"):
        grid_windows((10, 10), (2,))


# --------------------------------------------------------------------------- PatchDataset


def test_patches_are_numpy_slices_and_a_batch_is_one_batched_read(sharded):
    arr, data = sharded
    calls: list = []
    windows = random_windows(SHAPE, (33, 20), 40, seed=1)
    ds = PatchDataset(counting(gpuzarr.open(arr.store.url, device="cpu"), calls), windows)
    assert len(ds) == 40
    batch = ds.__getitems__([5, 0, 39, 5])
    assert len(calls) == 1 and calls[0] == [windows[i] for i in (5, 0, 39, 5)]
    assert batch.shape == (4, 33, 20)
    for row, i in zip(batch, (5, 0, 39, 5)):
        assert_same(row, data[windows[i]], f"window {i}")
    assert_same(ds[7], data[windows[7]])
    assert_same(ds[-1], data[windows[39]])
    assert len(calls) == 3
    with pytest.raises(IndexError):
        ds[40]
    with pytest.raises(TypeError, match="integers"):
        ds.__getitems__([1.5])


def test_a_list_of_slices_is_accepted(sharded):
    arr, data = sharded
    ds = PatchDataset(arr, [(slice(10, 20), slice(None, 7)), (slice(140, 150), slice(0, 7))])
    assert_same(ds.__getitems__([0, 1]), np.stack([data[10:20, :7], data[140:150, :7]]))


def test_edge_error_names_the_window_and_the_shape(sharded):
    arr, _ = sharded
    with pytest.raises(IndexError, match=r"window 1 \(slice\(140, 160.*shape \(150, 130\).*2 windows"):
        PatchDataset(arr, Windows([[0, 0], [140, 0], [-1, 0]], (20, 20)))
    with pytest.raises(ValueError, match="edge must be"):
        PatchDataset(arr, Windows([[0, 0]], (2, 2)), edge="wrap")


def test_edge_shift_moves_windows_inside(sharded):
    arr, data = sharded
    ds = PatchDataset(arr, Windows([[140, -5], [-3, 125], [10, 10]], (20, 20)), edge="shift")
    assert ds.windows == Windows([[130, 0], [0, 110], [10, 10]], (20, 20))
    batch = ds.__getitems__([0, 1, 2])
    for row, w in zip(batch, ds.windows.selections()):
        assert_same(row, data[w])
    with pytest.raises(ValueError, match="larger than the array .* axis 1"):
        PatchDataset(arr, Windows([[0, 0]], (10, 131)), edge="shift")


def test_edge_pad_fills_with_the_fill_value_in_one_read(holey):
    arr, source = holey
    calls: list = []
    counted = counting(gpuzarr.open(arr.store.url, device="cpu"), calls)
    # crossing each edge and corner, inside, wholly outside, over the missing chunk
    starts = [[-5, -5], [60, 45], [-9, 20], [65, -3], [10, 10], [100, 100], [0, 14], [-20, -20]]
    ds = PatchDataset(counted, Windows(starts, (12, 10)), edge="pad")
    batch = ds.__getitems__(list(range(len(starts))))
    assert len(calls) == 1
    assert batch.dtype == arr[:1, :1].dtype  # as a plain read returns it
    for row, w in zip(batch, ds.windows.selections()):
        assert_same(row, padded_reference(source, FILL, w), str(w))
    assert (batch[5] == FILL).all() and (batch[7] == FILL).all()


def test_edge_pad_takes_windows_larger_than_the_array(holey):
    arr, source = holey
    ds = PatchDataset(arr, Windows([[-3, -2], [0, 0], [-80, 7]], (80, 60)), edge="pad")
    batch = ds.__getitems__([0, 1, 2])
    for row, w in zip(batch, ds.windows.selections()):
        assert_same(row, padded_reference(source, FILL, w), str(w))
    assert_same(ds[1][:70, :50], source)


def test_edge_pad_with_every_window_inside_returns_the_read_itself(sharded):
    arr, data = sharded
    ds = PatchDataset(arr, grid_windows(SHAPE, (50, 65)), edge="pad")
    assert_same(ds.__getitems__(list(range(len(ds)))), np.stack([data[w] for w in ds.windows.selections()]))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "small"
    data = sample_data((23, 17), seed=5)
    write_sharded(str(path), data, (16, 8), (8, 4), fill_value=3)
    return gpuzarr.open(str(path), device="cpu"), data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_edge_policies_match_numpy(small, data):
    arr, source = small
    window = tuple(data.draw(st.integers(1, n + 6), label=f"window[{a}]") for a, n in enumerate(source.shape))
    starts = data.draw(st.lists(st.tuples(*(st.integers(-w - 2, n + 2) for w, n in zip(window, source.shape))),
                                min_size=1, max_size=5), label="starts")
    windows = Windows(starts, window)
    inside = all(0 <= s and s + w <= n for start in starts for s, w, n in zip(start, window, source.shape))
    fits = all(w <= n for w, n in zip(window, source.shape))
    for edge in ("error", "shift", "pad"):
        if (edge == "error" and not inside) or (edge == "shift" and not fits):
            with pytest.raises(IndexError if edge == "error" else ValueError):
                PatchDataset(arr, windows, edge=edge)
            continue
        ds = PatchDataset(arr, windows, edge=edge)
        batch = ds.__getitems__(list(range(len(starts))))
        for row, start in zip(batch, starts):
            if edge == "pad":
                want = padded_reference(source, 3, tuple(slice(s, s + w) for s, w in zip(start, window)))
            else:
                at = [min(max(s, 0), n - w) for s, w, n in zip(start, window, source.shape)]
                want = source[tuple(slice(a, a + w) for a, w in zip(at, window))]
            assert_same(row, want, f"{edge} {start}")


# --------------------------------------------------------------------------- collate


def test_collate_passes_a_batch_through_and_stacks_a_list():
    batch = np.arange(24).reshape(2, 3, 4)
    assert collate(batch) is batch
    assert_same(collate([batch[0], batch[1]]), batch)


# --------------------------------------------------------------------------- prefetch


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpuzarr-prefetch"]


class Source:
    """An iterable that records how far it was pulled and whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0):
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.pulled, self.closed, self.threads = 0, False, set()

    def __iter__(self):
        try:
            for i in range(self.n):
                time.sleep(self.delay)
                self.threads.add(threading.current_thread().name)
                if i == self.fail_at:
                    raise KeyError(f"item {i} is bad")
                self.pulled += 1
                yield i
        finally:
            self.closed = True


def _wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_prefetch_keeps_order_and_reads_on_its_thread():
    src = Source(50)
    assert list(prefetch(src, depth=3)) == list(range(50))
    assert src.threads == {"gpuzarr-prefetch"} and src.closed
    assert not _prefetch_threads()


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_prefetch_reads_depth_items_ahead_and_no_more(depth):
    src = Source(20)
    it = prefetch(src, depth=depth)
    assert next(it) == 0
    _wait_until(lambda: src.pulled == 1 + depth)
    time.sleep(0.05)
    assert src.pulled == 1 + depth  # the one being used plus depth ahead
    assert next(it) == 1
    _wait_until(lambda: src.pulled == 2 + depth)
    it.close()


def test_prefetch_raises_the_iterables_error_after_the_items_before_it():
    src = Source(10, fail_at=4)
    got = []
    with pytest.raises(KeyError, match="item 4 is bad") as info:
        for x in prefetch(src):
            got.append(x)
    assert got == [0, 1, 2, 3]
    assert any(tb.name == "__iter__" for tb in info.traceback)  # the source's own frame is kept
    assert not _prefetch_threads()


def _consume_until(it, last: int) -> None:
    for x in it:
        if x == last:
            break


@pytest.mark.parametrize("how", ["break", "close", "del"])
def test_prefetch_stops_its_thread_when_the_consumer_stops(how):
    src = Source(10_000, delay=0.001)
    if how == "break":  # the generator is dropped with the frame that broke out of its loop
        _consume_until(prefetch(src, depth=2), 3)
    else:
        it = prefetch(src, depth=2)
        _consume_until(it, 3)
        _wait_until(lambda: src.pulled >= 6)  # 4 taken + 2 ahead: the thread waits for a slot
        assert _prefetch_threads()
        if how == "close":
            it.close()
        else:
            del it
            gc.collect()
    assert not _prefetch_threads()
    assert src.closed and src.pulled <= 7


def test_prefetch_starts_no_thread_before_the_first_item_and_checks_depth():
    it = prefetch(range(3))
    assert not _prefetch_threads()
    del it
    with pytest.raises(ValueError, match="depth"):
        prefetch(range(3), depth=0)


class FakeCuda:
    """Stands in for cupy.cuda: streams are context managers that set the thread's current
    stream; every record/wait is logged, in order, with the thread that made it."""

    def __init__(self):
        self.log: list = []
        self.local = threading.local()
        self.null = FakeStream(self, "null", None)
        self.made = 0

    def Stream(self, non_blocking=False):  # noqa: N802 - cupy's name
        self.made += 1
        self.side = FakeStream(self, f"side{self.made}", non_blocking)
        return self.side

    def get_current_stream(self):
        return getattr(self.local, "stream", self.null)


class FakeStream:
    def __init__(self, cuda, name, non_blocking):
        self.cuda, self.name, self.non_blocking, self.events = cuda, name, non_blocking, 0

    def __enter__(self):
        self.cuda.local.stream = self

    def __exit__(self, *exc):
        self.cuda.local.stream = self.cuda.null

    def record(self):
        self.events += 1
        event = f"{self.name}#{self.events}"
        self.cuda.log.append(("record", self.name, event, threading.current_thread().name))
        return event

    def wait_event(self, event):
        self.cuda.log.append(("wait", self.name, event, threading.current_thread().name))


class GpuItem:
    is_cuda = True

    def __init__(self, i, cuda):
        self.i, self.stream = i, cuda.get_current_stream().name


def test_the_stream_handoff_orders_both_ways():
    cuda = FakeCuda()
    items = (GpuItem(i, cuda) for i in range(4))
    seen = []
    for item in _prefetched(items, 1, _StreamHandoff(cuda)):
        seen.append((item.i, item.stream))
        cuda.log.append(("consumed", item.i, None, "MainThread"))
    # item 0 is read on the thread's default stream, then on its own non-blocking stream
    assert seen == [(0, "null"), (1, "side1"), (2, "side1"), (3, "side1")]
    assert cuda.made == 1 and cuda.side.non_blocking is True
    # item 0's event is recorded on the thread's default stream, then one after each read
    worker = [e[:3] for e in cuda.log if e[3] == "gpuzarr-prefetch"]
    records = [e[2] for e in worker if e[0] == "record"]
    assert records[1:] == ["side1#1", "side1#2", "side1#3"] and worker[0] == ("record", "null", records[0])
    # the consumer waits on each item's event before using it ...
    main = [e[:3] for e in cuda.log if e[3] == "MainThread"]
    assert [e for e in main if e[0] != "record"] == [
        ("wait", "null", records[0]), ("consumed", 0, None), ("wait", "null", "side1#1"), ("consumed", 1, None),
        ("wait", "null", "side1#2"), ("consumed", 2, None), ("wait", "null", "side1#3"), ("consumed", 3, None)]
    # ... and records its stream's progress each time it asks for the next one (before item 0,
    # the stream may not exist yet)
    releases = [e[2] for e in main if e[0] == "record"]
    asked = {k: main[main.index(("wait", "null", f"side1#{k}")) - 1] for k in (1, 2, 3)}
    assert all(a[:2] == ("record", "null") for a in asked.values())
    # the thread's stream waits, before it reads item k >= 2, on an event the consumer recorded
    # when it asked for item k-1 or later: memory the consumer let go of is reused after its work
    waited = None
    for kind, stream, event in worker[1:]:
        if kind == "wait":
            assert stream == "side1" and event in releases
            waited = releases.index(event)
        elif event in ("side1#2", "side1#3"):
            k = int(event[-1])
            assert waited is not None and waited >= releases.index(asked[k - 1][2]), (worker, main)


def test_the_stream_handoff_stays_off_for_host_items():
    class NoCuda:
        def __getattr__(self, name):
            raise AssertionError(f"CUDA touched for host items: {name}")

    items = [np.zeros(2), (1, 2), "x"]
    assert list(_prefetched(iter(items), 2, _StreamHandoff(NoCuda()))) == items


# --------------------------------------------------------------------------- processes


def _read_pickled(args):
    blob, indices = args
    return pickle.loads(blob).__getitems__(indices)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pickled_dataset_reads_in_a_process_pool(holey, method):
    arr, source = holey
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    ds = PatchDataset(arr, grid_windows(source.shape, (16, 16), partial=True), edge="pad")
    ds[0]  # the parent has read (threads and caches exist) before it forks
    blob = pickle.dumps(ds)
    jobs = [(blob, list(range(i, min(i + 4, len(ds))))) for i in range(0, len(ds), 4)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_read_pickled, jobs, chunksize=1)
    for (_, indices), batch in zip(jobs, results):
        for row, i in zip(batch, indices):
            assert_same(row, padded_reference(source, FILL, ds.windows[i]), str(ds.windows[i]))


# --------------------------------------------------------------------------- torch


def _torch():
    return pytest.importorskip("torch", reason="torch is an optional extra ([torch]); CI does not install it")


def test_as_torch_shares_the_read_without_a_copy(sharded):
    torch = _torch()
    arr, data = sharded
    ds = PatchDataset(arr, random_windows(SHAPE, (8, 9), 10, seed=2), as_torch=True)
    batch = ds.__getitems__([1, 2, 3])
    assert isinstance(batch, torch.Tensor) and batch.shape == (3, 8, 9) and batch.dtype == torch.uint16
    assert_same(batch.numpy(), np.stack([data[ds.windows[i]] for i in (1, 2, 3)]))
    host = np.arange(6, dtype=np.uint16)
    assert to_torch(host).data_ptr() == host.ctypes.data  # shared


def test_to_torch_copies_only_what_torch_cannot_share():
    torch = _torch()
    big = np.arange(6, dtype=">i4")
    t = to_torch(big)
    assert t.dtype == torch.int32 and t.tolist() == list(range(6))
    frozen = np.arange(4, dtype=np.float32)
    frozen.flags.writeable = False
    t = to_torch(frozen)
    assert t.data_ptr() != frozen.ctypes.data and t.tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="no dtype for object"):
        PatchDataset(SimpleNamespace(shape=(4,), dtype=np.dtype(object)), [slice(0, 2)], as_torch=True)


def test_to_torch_takes_ml_dtypes_torch_has_without_a_copy():
    torch = _torch()
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
    values = np.array([0.5, -3.0, 1e30, np.nan], dtype=ml_dtypes.bfloat16)
    t = to_torch(values)
    assert t.dtype == torch.bfloat16 and t.data_ptr() == values.ctypes.data
    assert t.view(torch.int16).tolist() == values.view(np.int16).tolist()  # the same bits
    e4m3 = np.array([1.0, -2.0, 0.125], dtype=ml_dtypes.float8_e4m3fn)
    assert to_torch(e4m3).dtype == torch.float8_e4m3fn
    assert to_torch(e4m3).view(torch.uint8).tolist() == e4m3.view(np.uint8).tolist()
    with pytest.raises(TypeError, match="no dtype for int4"):
        to_torch(np.zeros(3, dtype=ml_dtypes.int4))


def test_to_torch_widens_unsigned_types_an_older_torch_lacks(monkeypatch):
    torch = _torch()
    from gpuzarr import loader

    real = torch.from_numpy

    def old_from_numpy(a):  # torch < 2.3: no uint16/uint32/uint64
        if a.dtype.kind == "u" and a.dtype.itemsize > 1:
            raise TypeError(f"can't convert np.ndarray of type numpy.{a.dtype}")
        return real(a)

    monkeypatch.setattr(torch, "from_numpy", old_from_numpy)
    loader._torch_widening.cache_clear()
    try:
        t = to_torch(np.array([0, 65535], np.uint16))
        assert t.dtype == torch.int32 and t.tolist() == [0, 65535]
        assert to_torch(np.array([2**32 - 1], np.uint32)).tolist() == [2**32 - 1]
        with pytest.raises(TypeError, match="no dtype for uint64"):
            to_torch(np.array([1], np.uint64))
    finally:
        loader._torch_widening.cache_clear()


def test_the_default_collate_cannot_take_a_stacked_tensor(sharded):
    """Why `collate` exists: torch's fetcher hands __getitems__'s result to collate_fn whole."""
    torch = _torch()
    from torch.utils.data import DataLoader

    arr, _ = sharded
    ds = PatchDataset(arr, random_windows(SHAPE, (8, 8), 16, seed=0), as_torch=True)
    with pytest.raises(TypeError, match="stack"):
        next(iter(DataLoader(ds, batch_size=4)))
    assert next(iter(DataLoader(ds, batch_size=4, collate_fn=collate))).shape == (4, 8, 8)
    assert isinstance(next(iter(DataLoader(ds, batch_size=None))), torch.Tensor)  # one patch per item


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_torch_dataloader_with_workers(sharded, method):
    torch = _torch()
    from torch.utils.data import DataLoader

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    arr, data = sharded
    windows = random_windows(SHAPE, (24, 32), 60, seed=9)
    ds = PatchDataset(arr, windows, as_torch=True)
    order = np.random.default_rng(1).permutation(len(ds)).tolist()  # shuffled, known
    loader = DataLoader(ds, batch_size=8, sampler=order, num_workers=2, collate_fn=collate,
                        multiprocessing_context=method)
    batches = list(loader)
    order = [order[i:i + 8] for i in range(0, len(order), 8)]
    assert [b.shape[0] for b in batches] == [8] * 7 + [4]
    for indices, batch in zip(order, batches):
        assert isinstance(batch, torch.Tensor) and batch.dtype == torch.uint16
        assert_same(batch.numpy(), np.stack([data[windows[i]] for i in indices]))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_patches_and_padding_match_the_cpu(holey):
    ok, why = usable_gpu()
    if not ok:
        pytest.skip(why)
    import cupy

    arr, source = holey
    windows = Windows([[-5, -5], [10, 10], [60, 45], [100, 100]], (12, 10))
    gpu = PatchDataset(arr, windows, device="gpu", edge="pad")
    cpu = PatchDataset(arr, windows, device="cpu", edge="pad")
    got = gpu.__getitems__([0, 1, 2, 3])
    assert isinstance(got, cupy.ndarray)
    assert_same(cupy.asnumpy(got), cpu.__getitems__([0, 1, 2, 3]))
    batches = list(prefetch(gpu.__getitems__([i]) for i in range(4)))
    for i, b in enumerate(batches):
        assert_same(cupy.asnumpy(b)[0], padded_reference(source, FILL, windows[i]))


@pytest.mark.gpu
def test_gpu_as_torch_is_zero_copy(sharded):
    ok, why = usable_gpu()
    if not ok:
        pytest.skip(why)
    torch = _torch()

    arr, data = sharded
    ds = PatchDataset(arr, grid_windows(SHAPE, (32, 32)), device="gpu")
    batch = ds.__getitems__([0, 1])
    t = to_torch(batch)
    assert isinstance(t, torch.Tensor) and t.is_cuda and t.data_ptr() == batch.data.ptr
    assert_same(t.cpu().numpy(), np.stack([data[ds.windows[0]], data[ds.windows[1]]]))


def test_read_windows_equals_read_batch_and_refuses_windows_outside(sharded):
    arr, data = sharded
    windows = random_windows(SHAPE, (17, 31), 25, seed=4)
    report = gpuzarr.ReadReport()
    got = arr.read_windows(windows.starts, windows.shape, report=report)
    assert_same(got, arr.read_batch(windows.selections()))
    assert_same(got, np.stack([data[w] for w in windows.selections()]))
    assert report.batches >= 1 and report.placements >= 25
    assert arr.read_windows(np.zeros((0, 2), np.int64), (3, 3)).shape == (0, 3, 3)
    with pytest.raises(IndexError, match=r"window 1 starting at \(140, 0\)"):
        arr.read_windows([[0, 0], [140, 0]], (11, 2))
    with pytest.raises(ValueError, match=r"read_windows needs window starts as an \(n, 2\) integer array"):
        arr.read_windows(np.zeros((3, 2)), (1, 1))
    with pytest.raises(ValueError, match=r"read_windows: window starts must fit in int64"):  # (they wrapped)
        arr.read_windows(np.array([[2**64 - 1, 0]], np.uint64), (1, 1))
    with pytest.raises(ValueError, match=r"a 2-d window shape"):
        arr.read_windows([[0, 0]], (1, 1, 1))


def test_windows_of_a_0d_array_and_an_empty_batch(tmp_path):
    """(n, 0) starts are a 0-d array's n windows (they were taken for none: shape (0,), len 0), and
    __getitems__([]) is an empty batch (it raised TypeError: np.asarray([]) is float); found by
    a differential run."""
    z = zarr.create_array(str(tmp_path / "s"), shape=(), chunks=(), dtype="i4", fill_value=3)
    z[()] = 42
    scalar = gpuzarr.open(str(tmp_path / "s"), device="cpu")
    np.testing.assert_array_equal(scalar.read_windows(np.zeros((3, 0), np.int64), ()), [42, 42, 42])
    assert len(Windows(np.zeros((3, 0), np.int64), ())) == 3
    assert scalar.read_windows([], ()).shape == (0,)
    assert len(Windows(np.empty((0, 2)), (2, 2))) == 0  # empty, of any dtype (a filtered float array)
    zarr.create_array(str(tmp_path / "a"), shape=(6, 6), chunks=(3, 3), dtype="i4", fill_value=0)[...] = 1
    patches = PatchDataset(gpuzarr.open(str(tmp_path / "a"), device="cpu"), Windows([[0, 0], [2, 2]], (2, 2)))
    assert patches.__getitems__([]).shape == (0, 2, 2)
    assert patches.array.read_windows(np.empty((0, 2)), (2, 2)).shape == (0, 2, 2)
