"""The GPU host feed's whole-batch shortcuts against the general paths they stand in for:
scatter records built per run and gathered per placement (placed through the stand-in's kernel
model, against the plan's own selections; a small plan's in Python integers, against those
too), and read_batch's patches made into Boxes straight from their slices (against Boxes.of of
the normalised windows, and the general path's refusals)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_standin import StandinEngine
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuzarr.devices import gpu_layout
from gpuzarr.devices.gpu_layout import scatter_records
from gpuzarr.indexing import _patch_boxes, parse_batch
from gpuzarr.plan import BOXES_FROM, Boxes, make_plan
from gpuzarr.selection import normalize


@st.composite
def _reads(draw):
    """An array shape, chunk shape, and one or more windows (slices of any step, integers)."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 12)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    steps = [draw(st.sampled_from([1, 1, 2, -1, -3])) for _ in shape]
    drops = [draw(st.booleans()) for _ in shape]
    lens = [draw(st.integers(1, n)) for n in shape]
    windows = []
    for _ in range(draw(st.integers(1, 4))):
        sel = []
        for n, step, drop, k in zip(shape, steps, drops, lens):
            if drop:
                sel.append(draw(st.integers(0, n - 1)))
                continue
            span = (k - 1) * abs(step) + 1
            if span > n:
                step, span = 1, k
            a = draw(st.integers(0, n - span))
            sel.append(slice(a, a + span, step) if step > 0 else slice(a + span - 1, a - 1 if a else None, step))
        windows.append(tuple(sel))
    return shape, chunks, windows


@settings(max_examples=200, deadline=None)
@given(read=_reads(), data=st.data())
def test_scatter_records_place_what_the_plan_selects(read, data):
    shape, chunks, windows = read
    batched = len(windows) > 1 or data.draw(st.booleans())
    plan = make_plan([normalize(w, shape) for w in windows], chunks, batched)
    source = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    want = np.stack([source[w] for w in windows]) if batched else source[windows[0]]
    decoded = np.zeros((plan.n_chunks, *chunks), np.int32)
    for i, corner in enumerate(plan.chunks.tolist()):
        part = source[tuple(slice(k * c, (k + 1) * c) for k, c in zip(corner, chunks))]
        decoded[i][tuple(slice(0, n) for n in part.shape)] = part
    present = np.array(data.draw(st.lists(st.booleans(), min_size=plan.n_chunks, max_size=plan.n_chunks)), bool)
    first = data.draw(st.integers(0, plan.n_chunks - 1))
    stop = data.draw(st.integers(first + 1, plan.n_chunks))
    out = np.full(want.shape, -1, np.int32)
    records, fills = scatter_records(plan, first, stop, present[first:stop], chunks, 4, out.strides)
    engine = StandinEngine()
    engine.scatter(decoded[first:stop], out, records, 4, len(chunks))
    engine.fill(out, fills, np.int32(-2).tobytes().ljust(16, b"\0"), 4, len(chunks))
    expected = np.full(want.shape, -1, np.int32)
    for chunk, inside, place in plan.selections(first, stop):
        part = inside(decoded[chunk]) if callable(inside) else decoded[chunk][inside]
        expected[place] = part if present[chunk] else -2
    np.testing.assert_array_equal(out, expected)
    if first == 0 and stop == plan.n_chunks and present.all():
        np.testing.assert_array_equal(out, want)
    # a small plan's records in Python integers, as the whole-column path builds them
    order = data.draw(st.none() | st.permutations(range(len(chunks))).map(tuple))
    span = plan.placements_of(first, stop)
    for got, want_ in zip(gpu_layout._small_records(plan, span, first, chunks, 4, out.strides, order),
                          gpu_layout._records(plan, span, first, chunks, 4, out.strides, order)):
        assert got.dtype == want_.dtype and got.shape == want_.shape and (got == want_).all()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_patch_boxes_are_the_boxes_of_the_normalised_windows(data):
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(0, 30)) for _ in range(ndim))
    end = st.integers(-35, 35)
    n = data.draw(st.integers(BOXES_FROM, BOXES_FROM + 4))
    indexed = [data.draw(st.booleans()) for _ in range(ndim)]  # an integer on this axis, as `[z, y0:y1]`
    first = [(data.draw(end), data.draw(end)) for _ in range(ndim)]
    windows = []
    for _ in range(n):  # mostly one shape: shifted copies of the first window, ends as given
        shift = [data.draw(st.integers(-3, 3)) for _ in range(ndim)]
        windows.append(tuple(a + s if integer else slice(a + s, b + s, data.draw(st.sampled_from([None, 1])))
                             for (a, b), s, integer in zip(first, shift, indexed)))
    boxes = _patch_boxes(windows, shape)
    try:
        normalised = [normalize(w, shape) for w in windows]
    except IndexError:  # an integer outside its axis: the general path says so
        assert boxes is None
        with pytest.raises(IndexError, match="out of bounds"):
            parse_batch(windows, shape)
        return
    reference = Boxes.of(normalised)
    if len({tuple(d.count for d in w) for w in normalised}) > 1:
        assert boxes is None
        with pytest.raises(ValueError, match="same shape"):
            parse_batch(windows, shape)
        return
    assert boxes is not None and reference is not None
    np.testing.assert_array_equal(boxes.starts, reference.starts)
    assert (boxes.counts, boxes.drop) == (reference.counts, reference.drop)
    assert boxes.starts.dtype == np.int64


def test_other_windows_take_the_general_path():
    shape = (20, 20)
    patches = [(slice(k, k + 4), slice(0, 4)) for k in range(BOXES_FROM)]
    assert isinstance(parse_batch(patches, shape), Boxes)
    assert isinstance(parse_batch(iter(patches), shape), Boxes)  # any iterable, as before
    assert isinstance(parse_batch(patches[:BOXES_FROM - 1], shape), list)  # few: planned per window
    for odd in ((slice(None, 4), slice(0, 4)), (slice(0, 8, 2), slice(0, 4)), (2, slice(0, 4)), (slice(0, 4),),
                (Ellipsis, slice(0, 4))):
        assert _patch_boxes(patches[1:] + [odd], shape) is None, odd
    numpy_ends = [(slice(np.int64(k), np.int32(k + 4)), slice(np.int16(0), 4)) for k in range(BOXES_FROM)]
    assert isinstance(parse_batch(numpy_ends, shape), Boxes)
    for odd in ((slice(True, 5), slice(0, 4)), (slice(np.uint64(0), 4), slice(0, 4)), (slice(0, 2**70), slice(0, 4))):
        assert _patch_boxes(patches[1:] + [odd], shape) is None, odd  # the general path decides
    indexed = [(np.int32(k), slice(k, k + 4)) for k in range(BOXES_FROM)]  # `[z, y0:y1]`: a loader's slices
    boxes = parse_batch(indexed, shape)
    assert isinstance(boxes, Boxes) and boxes.drop == (True, False) and boxes.out_shape == (4,)
    for odd in ((True, slice(0, 4)), (np.uint64(1), slice(0, 4)), (1.0, slice(0, 4)), (20, slice(0, 4)),
                (-21, slice(0, 4))):
        assert _patch_boxes(indexed[1:] + [odd], shape) is None, odd  # the general path decides
    far = parse_batch([(slice(k, k + 4), slice(16, 2**70)) for k in range(BOXES_FROM)], shape)
    assert [d.count for d in far[0]] == [4, 4]
    with pytest.raises(TypeError):
        parse_batch(patches[1:] + [(slice(0.5, 4), slice(0, 4))], shape)
    with pytest.raises(IndexError):
        parse_batch(patches[1:] + [(slice(0, 4), slice(0, 4), slice(0, 1))], shape)
    with pytest.raises(ValueError, match="at least one"):
        parse_batch([], shape)
