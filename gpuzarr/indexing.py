"""Indexing beyond slices, as NumPy and zarr-python users write it: integer arrays and boolean
masks (orthogonal, as zarr-python's `oindex` and its `__getitem__` with one array among slices),
pointwise coordinates (`vindex`, broadcast as NumPy does), `np.newaxis`. Each becomes ONE read of
the batched pipeline (every chunk fetched and decoded once): an orthogonal index array becomes
runs of the one window, a set of points becomes `Boxes`, one window per point.

`__getitem__` follows zarr-python where it reads a selection (a lone mask or a tuple of integers
and integer arrays is pointwise, one array among slices and integers is orthogonal, so are
masks or arrays on every axis) and NumPy where zarr-python refuses one (a mask over leading axes,
several arrays among slices, an N-d integer array, Ellipsis or np.newaxis with arrays)."""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .plan import BOXES_FROM, Boxes
from .selection import DimSelection, index_array, normalize, normalize_item

Shape = tuple[int, ...]
_BASIC = (slice, int, type(Ellipsis))


@dataclass(frozen=True)
class Query:
    """One read: the pipeline fills `pipe_shape`; the result is that reshaped to `split`,
    transposed by `perm` (vindex's broadcast axes moved into place), then given `shape`'s
    new axes (np.newaxis)."""

    windows: list[list[DimSelection]] | Boxes
    batched: bool
    pipe_shape: Shape
    split: Shape
    perm: tuple[int, ...]
    shape: Shape

    @property
    def plain(self) -> bool:
        """The pipeline's output is the result (basic indexing, and most orthogonal)."""
        return self.pipe_shape == self.shape and self.perm == tuple(range(len(self.perm)))

    def result(self, pipe_out: Any, xp: Any) -> Any:
        if self.plain:
            return pipe_out
        return xp.reshape(xp.transpose(xp.reshape(pipe_out, self.split), self.perm), self.shape)


def parse(selection: Any, shape: Shape, mode: str = "getitem") -> Query:
    """`mode`: "getitem" (arr[...]), "oindex" or "vindex"."""
    items = list(selection) if isinstance(selection, tuple) else [selection]
    if all(type(item) in _BASIC for item in items):  # the common read: slices and integers only
        dims = normalize(selection, shape)
        pipe = tuple(d.count for d in dims if not d.drop)
        return Query([dims], False, pipe, pipe, tuple(range(len(pipe))), pipe)
    items = [_as_index(item) for item in items]
    pure_fancy = _pure_fancy(items, len(shape))
    items = _expand_ellipsis(items, len(shape))
    arrays = [i for i, item in enumerate(items) if isinstance(item, np.ndarray)]
    if mode == "vindex":
        vectorized = bool(arrays)
    elif mode == "oindex":
        vectorized = False
    else:
        multi_d_mask = any(items[i].dtype == bool and items[i].ndim > 1 for i in arrays)
        spread = len(arrays) > 1 and len(arrays) < sum(item is not None for item in items)  # zarr refuses
        vectorized = pure_fancy or multi_d_mask or spread
    if vectorized:
        return _pointwise(items, shape)
    return _orthogonal(items, shape, single_nd=mode == "getitem" and len(arrays) == 1)


def parse_batch(selections: list, shape: Shape) -> list[list[DimSelection]] | Boxes:
    """read_batch's windows, checked to share one shape: Boxes made straight from the slices where
    they are patches (see _patch_boxes), else normalised one by one."""
    selections = list(selections)
    boxes = _patch_boxes(selections, shape) if len(selections) >= BOXES_FROM else None
    if boxes is not None:
        return boxes
    windows = [normalize(s, shape) for s in selections]
    if not windows:
        raise ValueError("read_batch needs at least one selection")
    shapes = {tuple(d.count for d in w if not d.drop) for w in windows}
    if len(shapes) > 1:
        raise ValueError(f"read_batch windows must all have the same shape, got {sorted(shapes)}")
    return windows


_STEP, _START, _STOP = operator.attrgetter("step"), operator.attrgetter("start"), operator.attrgetter("stop")


def _steps_are_one(items: list) -> bool:
    try:
        return set(map(_STEP, items)) <= {None, 1}
    except TypeError:  # an unhashable step: the general path says what is wrong with it
        return False


def _patch_boxes(selections: list, shape: Shape) -> Boxes | None:
    """Windows that are each a tuple of one slice of step 1 or one integer per axis (the same kind
    on an axis in every window), with integer ends, all of one shape (a loader's patches, `[z,
    y0:y1, x0:x1]` included), as the Boxes that planning would make of them (Boxes.of), in one
    array program over the ends (slice.indices' rules): no DimSelection per window (256 patches:
    ~1.6 -> ~0.2 ms; 256 ML patches, an integer slice index each: 4.4 -> 0.6 ms). None for anything
    else, which the general path plans or refuses."""
    ndim = len(shape)  # below: map() and sets, C loops (a generator in all() costs 4x more)
    if not ndim or set(map(type, selections)) != {tuple} or set(map(len, selections)) != {ndim}:
        return None
    items = list(itertools.chain.from_iterable(selections))
    if set(map(type, items)) == {slice}:  # slices only, the common case: no per-axis sorting out
        drop = (False,) * ndim
        if not _steps_are_one(items):
            return None
        starts, stops = list(map(_START, items)), list(map(_STOP, items))
    else:
        kinds = [set(map(type, axis)) for axis in zip(*selections)]  # the types on each axis
        drop = tuple(kind != {slice} for kind in kinds)
        if any(dropped and not all(_int64_type(t) for t in kind) for kind, dropped in zip(kinds, drop)):
            return None  # a mix of slices and integers on an axis, or another type: the general path
        dropped = drop * len(selections)
        if not _steps_are_one([item for item, d in zip(items, dropped) if not d]):
            return None
        starts = [item if d else item.start for item, d in zip(items, dropped)]
        stops = [item if d else item.stop for item, d in zip(items, dropped)]
    if not all(_int64_type(t) for t in set(map(type, starts)) | set(map(type, stops))):
        return None  # open ends (None), floats, bools: the general path
    try:  # two typed lists: 2.5x faster than an array made of (start, stop) tuples
        ends = np.array([starts, stops], dtype=np.int64).reshape(2, len(selections), ndim)
    except OverflowError:  # integers beyond int64
        return None
    size = np.asarray(shape, dtype=np.int64)
    indexed = np.array(drop)
    if indexed.any():  # an integer index must lie in the array (-size <= i < size): else the general path says so
        index, bound = ends[0][:, indexed], size[indexed]
        if ((index < -bound) | (index >= bound)).any():
            return None
    if ends.min() < 0 or (ends > size).any():  # ends from the end, or past it (slice.indices' rules)
        ends = np.clip(np.where(ends < 0, ends + size, ends), 0, size)
    lo, hi = ends
    if indexed.any():
        hi[:, indexed] = lo[:, indexed] + 1  # an index's own element (-1 is the last, its "stop" 0 above)
    counts = np.maximum(hi - lo, 0)
    if (counts != counts[0]).any():
        return None
    return Boxes(lo, tuple(counts[0].tolist()), drop)


def _int64_type(t: type) -> bool:
    """An integer type whose values the int64 tables take as a window's end or index (np.uint64's
    may not fit; a bool is no position). Of types: _is_int below looks at one value."""
    return t is int or (issubclass(t, np.integer) and t is not np.uint64)


def _as_index(item: Any) -> Any:
    """Lists, tuples inside the selection (NumPy's and zarr-python's index arrays too) and arrays
    (NumPy, CuPy) of integers or booleans → NumPy arrays; the rest as is."""
    if isinstance(item, (list, tuple, np.ndarray)) or hasattr(item, "__cuda_array_interface__"):
        array = item.get() if hasattr(item, "__cuda_array_interface__") else np.asarray(item)
        if array.size == 0 and array.dtype.kind not in "biu":
            array = array.astype(np.int64)  # [] selects nothing
        if array.dtype.kind not in "biu":
            raise IndexError(f"arrays used as indices must be of integer or boolean type, got {array.dtype}")
        if array.ndim == 0:  # an integer; a 0-d mask (NumPy's new axis of length 0 or 1) is refused
            if array.dtype == bool:
                raise IndexError("a 0-d boolean index is not a position; a boolean mask is an array")
            return int(array)
        return array
    return item


def _pure_fancy(items: list, ndim: int) -> bool:
    """zarr-python's test for a pointwise __getitem__: a lone boolean array, or integers and
    integer arrays on every axis (at least one array; no slices, Ellipsis or None)."""
    if len(items) == 1 and isinstance(items[0], np.ndarray) and items[0].dtype == bool:
        return True
    if len(items) == 1 and ndim == 1 and isinstance(items[0], np.ndarray):
        return True
    return (len(items) == ndim and any(isinstance(i, np.ndarray) for i in items)
            and all((isinstance(i, np.ndarray) and i.dtype != bool) or _is_int(i) for i in items))


def _is_int(item: Any) -> bool:
    return not isinstance(item, (bool, np.bool_)) and isinstance(item, (int, np.integer))


def _expand_ellipsis(items: list, ndim: int) -> list:
    """Ellipsis replaced by full slices; a boolean array spans as many axes as it has dimensions."""
    n_ellipsis = sum(item is Ellipsis for item in items)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(item.ndim if isinstance(item, np.ndarray) and item.dtype == bool else 0 if item is None else 1
               for item in items if item is not Ellipsis)
    if used > ndim:
        raise IndexError(f"too many indices: array is {ndim}-dimensional, but {used} were indexed")
    fill = [slice(None)] * (ndim - used)
    if n_ellipsis:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)  # (index() compares arrays by ==)
        return items[:at] + fill + items[at + 1:]
    return items + fill


def _orthogonal(items: list, shape: Shape, single_nd: bool) -> Query:
    """Each axis on its own (an array selects those positions of its axis); a lone N-d integer
    array in __getitem__ selects along its axis and gives its shape there, as in NumPy."""
    dims: list[DimSelection] = []
    split: list[int] = []
    final: list[int] = []
    for item in items:
        if item is None:
            final.append(1)
            continue
        axis, size = len(dims), shape[len(dims)]
        if isinstance(item, np.ndarray):
            if item.ndim != 1 and not (single_nd and item.dtype != bool):
                raise IndexError(f"an orthogonal index array must be 1-dimensional, got shape {item.shape} "
                                 f"for axis {axis} (use vindex for pointwise indexing)")
            dims.append(index_array(item.reshape(-1), size, axis))
            picked = item.shape if item.dtype != bool else (dims[-1].count,)
            split += picked
            final += picked
            continue
        dim = normalize_item(item, size, axis)
        dims.append(dim)
        if not dim.drop:
            split.append(dim.count)
            final.append(dim.count)
    pipe = tuple(d.count for d in dims if not d.drop)
    return Query([dims], False, pipe, tuple(split), tuple(range(len(split))), tuple(final))


def _pointwise(items: list, shape: Shape) -> Query:
    """NumPy's advanced indexing: the arrays (and integers among them) broadcast together to
    the points' shape B; each point is one window over the sliced axes. B's axes stand where
    the first array was if the arrays are adjacent, else first."""
    if any(item is None for item in items):
        raise IndexError("np.newaxis cannot be combined with pointwise (vectorized) indexing here")
    advanced: list[tuple[int, np.ndarray]] = []  # (axis, coordinates)
    sliced: dict[int, DimSelection] = {}
    axis = 0
    for item in items:
        if isinstance(item, np.ndarray) and item.dtype == bool:
            if item.shape != shape[axis:axis + item.ndim]:
                raise IndexError(f"boolean index of shape {item.shape} does not match the array's axes "
                                 f"{axis}..{axis + item.ndim - 1} of shape {shape[axis:axis + item.ndim]}")
            advanced += [(axis + k, c) for k, c in enumerate(np.nonzero(item))]
            axis += item.ndim
        elif isinstance(item, np.ndarray) or _is_int(item):
            advanced.append((axis, np.asarray(item)))
            axis += 1
        else:
            sliced[axis] = normalize_item(item, shape[axis], axis)
            axis += 1
    try:
        coords = np.broadcast_arrays(*(c for _, c in advanced))
    except ValueError:
        raise IndexError("shape mismatch: the index arrays could not be broadcast together with shapes "
                         + " ".join(str(c.shape) for _, c in advanced)) from None
    points = coords[0].shape
    starts = np.zeros((math.prod(points), len(shape)), dtype=np.int64)
    for (ax, _), c in zip(advanced, coords):
        starts[:, ax] = index_array(c.reshape(-1), shape[ax], ax).indices
    for ax, dim in sliced.items():
        starts[:, ax] = dim.start
    counts = tuple(sliced[ax].count if ax in sliced else 1 for ax in range(len(shape)))
    drop = tuple(ax not in sliced for ax in range(len(shape)))
    if not starts.shape[0] or all(dim.step == 1 for dim in sliced.values()):
        windows: Any = Boxes(starts, counts, drop)
    else:  # a stepped slice beside the arrays: one window object per point
        windows = [[sliced[ax] if ax in sliced else DimSelection(int(s), 1, 1, drop=True)
                    for ax, s in enumerate(row)] for row in starts.tolist()]
    slice_shape = tuple(sliced[ax].count for ax in sorted(sliced))
    axes = [ax for ax, _ in advanced]
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    at = sum(ax < axes[0] for ax in sliced) if adjacent else 0
    n_b = len(points)
    perm = tuple(range(n_b, n_b + at)) + tuple(range(n_b)) + tuple(range(n_b + at, n_b + len(slice_shape)))
    final = slice_shape[:at] + points + slice_shape[at:]
    return Query(windows, True, (math.prod(points),) + slice_shape, points + slice_shape, perm, final)
