"""Property tests: random arrays written by zarr-python from a NumPy source, read back by gpuzarr.

Shapes 0-d to 4-d (size-0 dimensions included), chunks that do and do not divide the shape (and
exceed it), optional shards (index at start or end), every numeric dtype, codec none / zstd /
gzip / blosc, special fill values, partial writes (never-written chunks read as fill), and random
selections (ints, slices with any start/stop/step including negative ones, fewer indices than
dimensions, Ellipsis; orthogonal integer arrays and masks), each read down every fetch path
(see `read_paths`). gpuzarr's answer must
equal ``source[selection]`` bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import warnings

import fsspec
import numpy as np
import pytest
from checks import as_0d, assert_identical, poisoned_empty, stack, to_memory
from corpus import filled, make_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.devices import cpu
from gpuzarr.devices.cpu import CpuDevice

NUMERIC = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
           "float16", "float32", "float64", "complex64", "complex128"]
CODECS = ["none", "zstd", "gzip", "blosc"]
# At most this many chunks per dimension, so that no example writes thousands of files.
MAX_CHUNKS_PER_DIM = {0: 1, 1: 8, 2: 5, 3: 4, 4: 3}

# GPUZARR_PROPERTY_EXAMPLES raises the example count for a longer hunt (default 60: ~10 s).
SETTINGS = settings(max_examples=int(os.environ.get("GPUZARR_PROPERTY_EXAMPLES", "60")), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fill_values(dtype: np.dtype) -> st.SearchStrategy:
    if dtype.kind == "b":
        return st.sampled_from([False, True])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.sampled_from([0, 7, int(info.max), int(info.min)])
    if dtype.kind == "f":
        return st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf])
    return st.sampled_from([0j, complex(1.5, -2.0), complex(math.nan, math.inf)])


@st.composite
def array_specs(draw):
    fmt = draw(st.sampled_from([3, 3, 2]))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 10), min_size=ndim, max_size=ndim)))
    limit = MAX_CHUNKS_PER_DIM[ndim]
    chunks = tuple(draw(st.integers(max(1, -(-s // limit)), max(s, 1) + 2)) for s in shape)
    shards = None
    if fmt == 3 and ndim > 0 and draw(st.booleans()):
        shards = tuple(c * draw(st.integers(1, 3)) for c in chunks)
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    if fmt == 2 and dtype.itemsize > 1 and dtype.kind != "c" and draw(st.booleans()):
        dtype = dtype.newbyteorder(">")  # v2 keeps the declared byte order
    spec = {
        "fmt": fmt, "shape": shape, "chunks": chunks, "shards": shards, "dtype": dtype,
        "codec": draw(st.sampled_from(CODECS)),
        "index_location": draw(st.sampled_from(["start", "end"])) if shards else None,
        "order": draw(st.sampled_from(["C", "F"])) if fmt == 2 else None,
        "fill": draw(_fill_values(dtype)),
        "seed": draw(st.integers(0, 2**16)),
    }
    write = draw(st.sampled_from(["all", "region", "nothing"]))
    if write == "all":
        spec["regions"] = None
    elif write == "nothing":
        spec["regions"] = []
    else:
        spec["regions"] = [tuple(_region(draw, s) for s in shape)]
    return spec


def _region(draw, size: int) -> slice:
    a = draw(st.integers(0, size))
    return slice(a, draw(st.integers(a, size)))


def _index(draw, size: int):
    """One entry of a selection for a dimension of `size`."""
    if size > 0 and draw(st.integers(0, 4)) == 0:
        return draw(st.integers(-size, size - 1))
    bound = st.one_of(st.none(), st.integers(-size - 3, size + 3))
    return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, 3, 5, -1, -2, -3])))


@st.composite
def selections_for(draw, shape):
    if draw(st.integers(0, 9)) == 0:
        return ...
    sel = [_index(draw, s) for s in shape]
    if sel and draw(st.booleans()):  # an Ellipsis standing for dimensions k..m-1 (maybe none)
        k = draw(st.integers(0, len(sel)))
        m = draw(st.integers(k, len(sel)))
        return tuple(sel[:k] + [Ellipsis] + sel[m:])
    return tuple(sel[:draw(st.integers(min(1, len(sel)), len(sel)))])  # trailing dims left whole


_counter = itertools.count()
_SPLIT_SECONDS = cpu.SPLIT_SECONDS
_DEVICE = CpuDevice(threads=2)


@st.composite
def read_paths(draw):
    """How the read runs: one staged batch, or many batches that the CPU's tasks read themselves
    (local files) or that are staged into two slots in turn (other stores); decoded on the
    calling thread, or split over the pool."""
    return {"store": draw(st.sampled_from(["local", "local", "memory"])),
            "batch_bytes": draw(st.sampled_from([None, None, 1, 200, 4000])),
            "pooled": draw(st.booleans())}


@contextlib.contextmanager
def _opened(where, how, monkeypatch):
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0 if how["pooled"] else _SPLIT_SECONDS)
    monkeypatch.setattr(CpuDevice, "empty", poisoned_empty)
    settings_ = gpuzarr.Settings(batch_bytes=how["batch_bytes"])
    if how["store"] == "local":
        yield gpuzarr.open(str(where), device=_DEVICE, settings=settings_)
        return
    name = f"m{next(_counter)}"
    try:
        yield gpuzarr.open(to_memory(where, name), device=_DEVICE, settings=settings_)
    finally:
        fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


def _write(spec, where) -> np.ndarray:
    """Write the spec's array with zarr-python; returns what a reader must return for it."""
    import numcodecs
    import zarr
    from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, ZstdCodec

    shape, dtype, fmt = spec["shape"], spec["dtype"], spec["fmt"]
    kw = {}
    codec = spec["codec"]
    if fmt == 3:
        comp = {"none": None, "zstd": ZstdCodec(level=1), "gzip": GzipCodec(level=1),
                "blosc": BloscCodec(cname="lz4", shuffle="shuffle")}[codec]
        if spec["shards"]:
            inner = [BytesCodec()] + ([comp] if comp is not None else [])
            kw.update(chunks=spec["shards"], compressors=None, filters=None,
                      serializer=ShardingCodec(chunk_shape=spec["chunks"], codecs=inner,
                                               index_location=spec["index_location"]))
        else:
            kw.update(chunks=spec["chunks"], compressors=[comp] if comp is not None else None)
    else:
        comp = {"none": None, "zstd": numcodecs.Zstd(level=1), "gzip": numcodecs.GZip(level=1),
                "blosc": numcodecs.Blosc(cname="lz4", shuffle=1)}[codec]
        kw.update(chunks=spec["chunks"], compressors=comp, order=spec["order"])
    source = make_data(shape, dtype, spec["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # every written chunk is stored: zarr-python otherwise leaves out a chunk it finds equal to
        # the fill value, NaN-equal included (a complex nan+1j "equals" a nan+infj fill), and
        # reads that chunk back as the fill; gpuzarr does the same, but the source would disagree
        arr = zarr.create_array(str(where), shape=shape, dtype=dtype, zarr_format=fmt,
                                fill_value=spec["fill"], config={"write_empty_chunks": True}, **kw)
        for r in (spec["regions"] if spec["regions"] is not None else [...]):
            arr[r] = source[r]
    return filled(shape, dtype, spec["fill"], spec["regions"], source)


def _check(got, want, dtype, what):
    """A single element may come back as a scalar (NumPy's own `a[()]` does): compare it as a 0-d
    array of the array's dtype (scalars are always native-endian)."""
    if not isinstance(got, np.ndarray):
        got = as_0d(got, dtype)
    if not isinstance(want, np.ndarray):
        want = as_0d(want, dtype)
    assert_identical(got, want, what)


@SETTINGS
@given(data=st.data())
def test_read_equals_source(scratch, data, monkeypatch):
    spec = data.draw(array_specs(), label="array")
    how = data.draw(read_paths(), label="read path")
    where = scratch / f"a{next(_counter)}"
    try:
        expected = _write(spec, where)
        with _opened(where, how, monkeypatch) as arr:
            assert tuple(arr.shape) == spec["shape"]
            assert np.dtype(arr.dtype) == (spec["dtype"] if spec["fmt"] == 2 else spec["dtype"].newbyteorder("="))
            for _ in range(3):
                sel = data.draw(selections_for(spec["shape"]), label="selection")
                _check(arr[sel], expected[sel], expected.dtype, f"{spec} {how} [{sel!r}]")
    finally:
        shutil.rmtree(where, ignore_errors=True)


@st.composite
def orthogonal_for(draw, shape):
    """Per dimension an integer array (any order, repeats, negative), a boolean mask or a slice:
    an orthogonal selection (arr.oindex), and the index array each entry stands for."""
    sel, picks = [], []
    for size in shape:
        kind = draw(st.integers(0, 2)) if size else 2
        if kind == 0:
            entry = np.array(draw(st.lists(st.integers(-size, size - 1), min_size=1, max_size=6)), np.int64)
        elif kind == 1:
            entry = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), bool)
        elif draw(st.booleans()):
            entry = slice(None)  # whole: with arrays elsewhere, chunks picked whole
        else:
            entry = _index(draw, size)
            if not isinstance(entry, slice):
                entry = slice(entry, entry + 1 if entry != -1 else None)
        sel.append(entry)
        picks.append(np.arange(size)[entry])
    return tuple(sel), picks


@SETTINGS
@given(data=st.data())
def test_orthogonal_read_equals_source(scratch, data, monkeypatch):
    """Integer arrays and masks down every read path: chunks they pick whole, out of order or
    repeated, are placed where they say (the CPU pool's box placement once tiled them in grid
    order: wrong data)."""
    spec = data.draw(array_specs().filter(lambda s: len(s["shape"]) > 0), label="array")
    how = data.draw(read_paths(), label="read path")
    if data.draw(st.booleans()):  # chunks 1-3 wide, compressed, all written, read on the pool: the
        # chunks integer arrays pick whole, in parts of several, are placed as tiles of a box
        spec.update(chunks=tuple(data.draw(st.integers(1, 3)) for _ in spec["shape"]), regions=None,
                    codec=data.draw(st.sampled_from(["zstd", "blosc"])))
        spec["shards"] = tuple(2 * c for c in spec["chunks"]) if spec["shards"] else None
        how.update(pooled=True, batch_bytes=None)
    where = scratch / f"o{next(_counter)}"
    try:
        expected = _write(spec, where)
        with _opened(where, how, monkeypatch) as arr:
            for _ in range(3):
                sel, picks = data.draw(orthogonal_for(spec["shape"]), label="selection")
                _check(arr.oindex[sel], expected[np.ix_(*picks)], expected.dtype, f"{spec} {how} oindex[{sel!r}]")
    finally:
        shutil.rmtree(where, ignore_errors=True)


@st.composite
def batch_windows(draw, shape):
    """2-4 same-shape windows (positive or negative step) at random places."""
    steps = [draw(st.sampled_from([1, 1, 2, -1])) for _ in shape]
    lens = [draw(st.integers(0, s)) for s in shape]
    sels = []
    for _ in range(draw(st.integers(2, 4))):
        sel = []
        for s, n, step in zip(shape, lens, steps):
            span = (n - 1) * abs(step) + 1 if n else 0
            start = draw(st.integers(0, s - span)) if span <= s else 0
            if n == 0:
                sel.append(slice(start, start))
            elif step > 0:
                sel.append(slice(start, start + span, step))
            else:
                hi = start + span - 1
                sel.append(slice(hi, start - 1 if start > 0 else None, step))
        sels.append(tuple(sel))
    return sels


@SETTINGS
@given(data=st.data())
def test_read_batch_equals_stacked_source(scratch, data, monkeypatch):
    spec = data.draw(array_specs().filter(lambda s: len(s["shape"]) > 0), label="array")
    how = data.draw(read_paths(), label="read path")
    where = scratch / f"b{next(_counter)}"
    try:
        expected = _write(spec, where)
        sels = data.draw(batch_windows(spec["shape"]), label="windows")
        want = stack([expected[s] for s in sels])
        with _opened(where, how, monkeypatch) as arr:
            _check(arr.read_batch(sels), want, expected.dtype, f"{spec} {how} read_batch({sels!r})")
    finally:
        shutil.rmtree(where, ignore_errors=True)
