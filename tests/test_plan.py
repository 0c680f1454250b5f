"""Planning tables against brute force: every selected element lands once, in the right place."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuzarr.plan import _dim_runs, _dim_runs_small
from gpuzarr.selection import DimSelection, normalize


def _brute(sel: DimSelection, chunk: int) -> list[tuple[int, int, int, int]]:
    idx = [sel.start + sel.step * j for j in range(sel.count)]
    runs: list[list[int]] = []
    for j, i in enumerate(idx):
        k = i // chunk
        if runs and runs[-1][0] == k:
            runs[-1][2] += 1
        else:
            runs.append([k, i - k * chunk, 1, j])
    return [tuple(r) for r in runs]


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 5000), chunk=st.integers(1, 300), data=st.data())
def test_runs_match_brute_force(size, chunk, data):
    step = data.draw(st.integers(-700, 700).filter(lambda s: s != 0))
    bound = st.none() | st.integers(-size - 2, size + 2)
    sel = normalize(slice(data.draw(bound), data.draw(bound), step), (size,))[0]
    expected = _brute(sel, chunk)
    for fn in (_dim_runs, _dim_runs_small):
        if sel.count == 0 and fn is _dim_runs_small:
            continue  # _dim_runs returns before calling it
        rows = list(zip(*(a.tolist() for a in fn(sel, chunk))))
        assert rows == expected, fn.__name__


def test_huge_step_costs_what_its_elements_cost():
    """a[::2**38] on a (2**40,) array of 1000-element chunks: 4 elements, 4 runs, no 10^9 loop."""
    sel = normalize(slice(None, None, 2**38), (2**40,))[0]
    chunks, local, counts, out = _dim_runs(sel, 1000)
    assert chunks.tolist() == [i * 2**38 // 1000 for i in range(4)]
    assert counts.tolist() == [1, 1, 1, 1] and out.tolist() == [0, 1, 2, 3]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_batched_step1_tables_equal_the_per_window_ones(data):
    """The whole-array planner for many step-1 windows of one shape (Boxes) builds exactly the
    per-window tables."""
    from gpuzarr.plan import Boxes, _tables_boxes, _tables_each

    ndim = data.draw(st.integers(0, 3))
    shape = tuple(data.draw(st.integers(0, 40)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(1, 9)) for _ in range(ndim))
    drops = [data.draw(st.booleans()) and n > 0 for n in shape]
    counts = [data.draw(st.integers(0, n)) for n in shape]
    windows = []
    for _ in range(data.draw(st.integers(1, 12))):
        sel = []
        for n, drop, count in zip(shape, drops, counts):
            a = data.draw(st.integers(0, n - 1 if drop else n - count))
            sel.append(a if drop else slice(a, a + count))
        windows.append(normalize(tuple(sel), shape))
    boxes = Boxes.of(windows)
    assert boxes is not None
    each, step1 = _tables_each(windows, chunks), _tables_boxes(boxes, chunks)
    for d in range(ndim):
        for a, b in zip(each[0][d], step1[0][d]):
            np.testing.assert_array_equal(a, b)
    assert each[1].shape == step1[1].shape
    np.testing.assert_array_equal(each[1], step1[1])
    np.testing.assert_array_equal(each[2], step1[2])


def test_read_batch_of_many_patches_matches_numpy(tmp_path):
    import gpuzarr
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((200, 300))
    write_sharded(str(tmp_path / "a"), data, (64, 128), (16, 32))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    rng = np.random.default_rng(1)
    windows = [(slice(y, y + 40), slice(x, x + 50)) for y, x in zip(rng.integers(0, 160, 64), rng.integers(0, 250, 64))]
    windows.append((slice(160, 200), slice(250, 300)))  # the last edge chunks
    np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
