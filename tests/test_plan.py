"""Planning tables against brute force: every selected element lands once, in the right place."""

from __future__ import annotations

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
