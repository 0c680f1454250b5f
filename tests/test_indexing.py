"""Indexing beyond slices (integer arrays, boolean masks, oindex, vindex, np.newaxis, __array__)
against NumPy on the source data and against zarr-python on the same files, on the CPU device
and on the GPU orchestration (its CPU stand-in): each read is one pass, each chunk decoded once."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import zarr
from checks import assert_identical
from gpu_standin import StandinEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.devices.gpu import GpuDevice

DEVICES = {"cpu": CpuDevice(threads=2), "gpu-standin": GpuDevice(StandinEngine())}


def _write(path, data, chunks, shards, fill=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
                              fill_value=fill, config={"write_empty_chunks": True})
        z[...] = data
    return z


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """30×41×7 int32, chunks 4×6×7 in shards 8×12×7: runs cross chunks and shards on two axes."""
    data = np.arange(30 * 41 * 7, dtype=np.int32).reshape(30, 41, 7) * 7 - 1000
    path = tmp_path_factory.mktemp("idx") / "a"
    z = _write(path, data, (4, 6, 7), (8, 12, 7))
    return data, z, {name: gpuzarr.open(str(path), device=dev) for name, dev in DEVICES.items()}


def _orthogonal_ref(data, sel):
    """NumPy's result of an orthogonal selection: each axis on its own."""
    out = data
    axis = 0
    for item in sel:
        if isinstance(item, (list, np.ndarray)):
            item = np.asarray(item)
            out = out.take(np.flatnonzero(item) if item.dtype == bool else item, axis=axis)
            axis += 1
        elif isinstance(item, slice):
            out = out[(slice(None),) * axis + (item,)]
            axis += 1
        else:
            out = out[(slice(None),) * axis + (item,)]
    return out


ROWS = np.array([29, 0, 3, 3, 17, -1, 8, 9, 10, 11])  # unsorted, repeated, negative, runs across chunks
MASK_1 = np.arange(41) % 5 < 2


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("sel, kind", [
    (ROWS, "numpy"), ([5, 1, 1, 3], "numpy"), ((slice(2, 20), ROWS[:4]), "numpy"),
    ((2, MASK_1), "numpy"), ((Ellipsis, [6, 0, 6]), "numpy"), ((ROWS, slice(None, None, -7), 3), "numpy"),
    ((ROWS[:3], [1, 40, 2], [0, 6, 3]), "numpy"),  # integers and arrays on every axis: pointwise
    ((np.array([[1, 2], [3, 29]]), np.array([[40], [0]]), 6), "numpy"),  # broadcast to 2×2
    (np.arange(30 * 41 * 7).reshape(30, 41, 7) % 11 == 0, "numpy"),  # a mask of the whole array
    ((slice(1, 4), [3, 4], [1, 5]), "numpy"),  # arrays adjacent after a slice: their axes stay there
    (([3, 4], slice(1, 4), [1, 5]), "numpy"),  # arrays apart: their axes go first
    ((np.arange(30) % 7 == 0, np.arange(41) < 3, np.ones(7, bool)), "orthogonal"),  # zarr-python: masks
    #                                                                  on every axis are orthogonal
    (np.array([[1, 2, 3], [4, 5, 29]]), "numpy"),  # an N-d integer array takes along axis 0
    ((None, slice(3, 9), None, 4, None), "numpy"), ((None, [4, 2]), "numpy"), ((), "numpy"),
    (np.arange(30 * 41).reshape(30, 41) % 13 == 1, "numpy"),  # a mask over the leading axes
    (([], slice(None)), "numpy"),
    # arrays before an Ellipsis (list.index(Ellipsis) compared them with ==: a ValueError)
    (([5, 1], Ellipsis), "numpy"), ((np.arange(30) % 4 == 1, Ellipsis), "numpy"),
    (([0, 1], Ellipsis, [1, 1]), "numpy"),
])
def test_getitem_reads_what_numpy_and_zarr_python_read(grid, device, sel, kind):
    data, z, arrays = grid
    want = data[sel] if kind == "numpy" else _orthogonal_ref(data, sel)
    report = gpuzarr.ReadReport()
    got = arrays[device].read(sel, report=report)
    assert_identical(got, want, f"arr[{sel!r}]")
    try:
        ref = z[sel]
    except (IndexError, TypeError, ValueError) as exc:  # zarr-python refuses some of NumPy's forms
        # (a mask before an Ellipsis: zarr-python 3.1 meets the ValueError gpuzarr met, see above)
        assert "zarr" in type(exc).__module__ or isinstance(exc, IndexError) or "truth value" in str(exc)
    else:
        assert_identical(got, ref, f"zarr-python's [{sel!r}]")
    assert report.chunks == len(set(_chunks_touched(data.shape, (4, 6, 7), sel, kind)))
    assert sum(report.codec_calls.values()) in (0, report.chunks) or device != "cpu"


def _chunks_touched(shape, chunks, sel, kind):
    """The chunk coordinates of every element the selection reads (from NumPy on coordinates)."""
    flat = np.arange(math.prod(shape)).reshape(shape)
    picked = np.asarray(flat[sel] if kind == "numpy" else _orthogonal_ref(flat, sel)).reshape(-1)
    return [tuple(c) for c in (np.stack(np.unravel_index(picked, shape), 1) // np.array(chunks)).tolist()]


@pytest.mark.parametrize("device", list(DEVICES))
def test_oindex_and_vindex(grid, device):
    data, z, arrays = grid
    arr = arrays[device]
    rows, cols = [7, 0, 29, 7], np.array([40, 1, 2, 3, -41])
    assert_identical(arr.oindex[rows, cols], data[np.ix_(rows, cols)])
    assert_identical(arr.oindex[rows, cols], z.oindex[rows, cols])
    assert_identical(arr.oindex[MASK_1[:30], ::-3, [6]], _orthogonal_ref(data, (MASK_1[:30], slice(None, None, -3), [6])))
    points = (np.array([0, 29, 5, 5]), np.array([0, 40, 7, 7]), np.array([0, 6, 3, 3]))
    assert_identical(arr.vindex[points], data[points])
    assert_identical(arr.vindex[points], z.vindex[points])
    mask = data % 17 == 3
    assert_identical(arr.vindex[mask], data[mask])
    patches = arr.vindex[[3, 20], :, [1, 5]]  # a (41,) column around each of two points
    assert_identical(patches, data[[3, 20], :, [1, 5]])
    assert_identical(arr.vindex[[3, 20], 30:2:-9, [1, 5]], data[[3, 20], 30:2:-9, [1, 5]])  # stepped slice
    assert_identical(arr.vindex[2, 3, 4], data[2, 3, 4])  # no array: basic


def test_many_points_are_one_pass_and_every_chunk_is_decoded_once(grid):
    data, _, arrays = grid
    rng = np.random.default_rng(3)
    points = tuple(rng.integers(0, n, 20_000) for n in data.shape)
    report = gpuzarr.ReadReport()
    got = arrays["cpu"].read(points, report=report)
    np.testing.assert_array_equal(got, data[points])
    distinct = {tuple(c) for c in (np.stack(points, 1) // [4, 6, 7]).tolist()}
    assert report.chunks == len(distinct) and sum(report.codec_calls.values()) == len(distinct)
    assert report.placements == 20_000


@pytest.mark.parametrize("device", list(DEVICES))
def test_out_receives_reshaped_and_moved_results(grid, device):
    data, _, arrays = grid
    arr = arrays[device]
    sel = (slice(1, 4), [3, 4], [1, 5])
    out = np.full(data[sel].shape, -7, np.int32)
    assert arr.read(sel, out=out) is out
    np.testing.assert_array_equal(out, data[sel])
    out = np.zeros((1, 6, 1), np.int32)
    arr.read((None, slice(3, 9), None, 4, 0), out=out)
    np.testing.assert_array_equal(out, data[None, 3:9, None, 4, 0])
    with pytest.raises(ValueError, match=r"needs \(1, 6, 1\)"):
        arr.read((None, slice(3, 9), None, 4, 0), out=np.zeros((6,), np.int32))
    out = np.zeros((2, 2, 41, 7), np.int32)
    arr.read(np.array([[1, 2], [3, 4]]), out=out)
    np.testing.assert_array_equal(out, data[np.array([[1, 2], [3, 4]])])


def test_asarray_reads_once_on_the_cpu(grid):
    data, _, arrays = grid
    for arr in arrays.values():
        got = np.asarray(arr)
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, data)
    assert np.asarray(arrays["cpu"], dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("sel, match", [
    ([1.5], "integer or boolean"), ([30], "out of bounds"), ((slice(None), [-42]), "out of bounds"),
    (np.zeros(29, bool), "does not match"), ((np.ones((30, 40), bool),), "does not match"),
    (([1, 2], [1, 2, 3], 0), "broadcast"), (np.array(True), "0-d boolean"),
    ((None, [1, 2], [3, 4]), "newaxis"), ((0, 0, 0, 0), "too many indices"), ((..., 0, ...), "single ellipsis"),
])
def test_bad_indices_raise_index_error_saying_why(grid, sel, match):
    _, _, arrays = grid
    with pytest.raises(IndexError, match=match):
        arrays["cpu"][sel]


@pytest.mark.parametrize("sel", [((3, 1, 29),), ((3, 1), slice(2, 9)), ((3, 1), (0, 40), 2), ((True, False) * 15,), ((),)],
                         ids=["alone", "beside_slice", "pointwise", "mask", "empty"])
def test_tuples_inside_a_selection_are_index_arrays_as_in_numpy(grid, sel):
    """zarr-python 3.1 reads ((1, 2),) as the point (1, 2), or refuses a tuple beside a slice;
    NumPy's meaning (an index array, a list's) is the one gpuzarr follows."""
    data, _, arrays = grid
    np.testing.assert_array_equal(arrays["cpu"][sel], data[sel])


def test_oindex_refuses_a_multidimensional_array(grid):
    _, _, arrays = grid
    with pytest.raises(IndexError, match="vindex"):
        arrays["cpu"].oindex[np.array([[1, 2]]), 0]


# ---------------------------------------------------------------------------------- properties

@st.composite
def _index_item(draw, size):
    kind = draw(st.sampled_from(["array", "mask", "slice", "int"] if size else ["slice", "array"]))
    if kind == "array":
        n = draw(st.integers(0, 12))
        return np.array(draw(st.lists(st.integers(-size, size - 1), min_size=n, max_size=n)) if size else [],
                        dtype=draw(st.sampled_from([np.int64, np.int32, np.intp])))
    if kind == "mask":
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    if kind == "int":
        return draw(st.integers(-size, size - 1))
    bound = st.one_of(st.none(), st.integers(-size - 2, size + 2))
    return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, -1, -3])))


@st.composite
def _array_case(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 14)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, max(1, s))) for s in shape)
    shards = tuple(c * draw(st.integers(1, 3)) for c in chunks) if draw(st.booleans()) else None
    return shape, chunks, shards


_counter = iter(range(10**9))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_array_case(), data=st.data())
def test_orthogonal_and_pointwise_reads_equal_numpy(tmp_path, case, data):
    shape, chunks, shards = case
    source = np.arange(math.prod(shape), dtype=np.int16).reshape(shape)
    path = tmp_path / f"p{next(_counter)}"
    _write(path, source, chunks, shards, fill=-5)
    device = DEVICES[data.draw(st.sampled_from(sorted(DEVICES)))]
    arr = gpuzarr.open(str(path), device=device)
    items = tuple(data.draw(_index_item(s)) for s in shape)
    assert_identical(arr.oindex[items], _orthogonal_ref(source, items), f"oindex[{items!r}]")
    cut = data.draw(st.integers(0, len(items)))  # the axes from `cut` on as an Ellipsis, after arrays too
    assert_identical(arr.oindex[items[:cut] + (Ellipsis,)], _orthogonal_ref(source, items[:cut]),
                     f"oindex[{items[:cut]!r} + (...,)]")
    points = tuple(np.asarray(data.draw(st.lists(st.integers(-s, s - 1), min_size=5, max_size=5))) for s in shape) \
        if all(shape) else None
    if points is not None:
        assert_identical(arr.vindex[points], source[points], f"vindex[{points!r}]")
        keep = data.draw(st.integers(0, len(shape) - 1))  # one axis sliced, the others pointwise
        mixed = tuple(slice(None, None, data.draw(st.sampled_from([1, -2]))) if d == keep else p
                      for d, p in enumerate(points))
        assert_identical(arr.vindex[mixed], source[mixed], f"vindex[{mixed!r}]")
