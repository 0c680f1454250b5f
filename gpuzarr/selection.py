"""Basic indexing (ints, slices with any step, Ellipsis) normalised per dimension."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DimSelection:
    """Elements start, start+step, … (`count` of them); `drop` for an integer index. With
    `indices` (orthogonal indexing by an integer array), the elements are those, in that order."""

    start: int
    step: int
    count: int
    drop: bool = False
    indices: np.ndarray | None = field(default=None, compare=False)


def index_array(values: np.ndarray, size: int, axis: int) -> DimSelection:
    """An integer (or boolean mask) array along one axis, checked and made non-negative."""
    values = np.asarray(values)
    if values.dtype == bool:
        if values.shape != (size,):
            raise IndexError(f"boolean index of shape {values.shape} does not match axis {axis} of size {size}")
        values = np.flatnonzero(values)
    elif values.size == 0:
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iu":
        raise IndexError(f"arrays used as indices must be of integer or boolean type, got {values.dtype} "
                         f"for axis {axis}")
    if values.ndim != 1:
        raise IndexError(f"an index array must be 1-dimensional here, got shape {values.shape} for axis {axis}")
    if values.size and values.max() >= size:
        raise IndexError(f"index {values.max()} is out of bounds for axis {axis} with size {size}")
    values = values.astype(np.int64)  # unsigned ones are below `size` now
    if values.size and values.min() < -size:
        raise IndexError(f"index {values.min()} is out of bounds for axis {axis} with size {size}")
    return DimSelection(0, 1, values.size, indices=np.where(values < 0, values + size, values))


def normalize(selection: Any, shape: Shape) -> list[DimSelection]:
    if not isinstance(selection, tuple):
        selection = (selection,)
    n_ellipsis = sum(s is Ellipsis for s in selection)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    explicit = len(selection) - n_ellipsis
    if explicit > len(shape):
        raise IndexError(f"too many indices: array is {len(shape)}-dimensional, but {explicit} were indexed")
    if n_ellipsis:
        at = next(i for i, s in enumerate(selection) if s is Ellipsis)
        fill = (slice(None),) * (len(shape) - explicit)
        selection = selection[:at] + fill + selection[at + 1:]
    selection = selection + (slice(None),) * (len(shape) - len(selection))
    return [normalize_item(s, n, axis) for axis, (s, n) in enumerate(zip(selection, shape))]


def normalize_item(item: Any, size: int, axis: int) -> DimSelection:
    if isinstance(item, slice):
        start, stop, step = item.indices(size)
        count = len(range(start, stop, step))
        # with at most one element the step is moot; dropping it keeps huge steps (>= 2**63) out
        # of the int64 planning tables
        return DimSelection(start, step if count > 1 else 1, count)
    if isinstance(item, (bool, np.bool_)):
        raise IndexError(f"a boolean scalar is not a position (axis {axis}); a boolean mask is an array")
    try:
        index = operator.index(item)
    except TypeError:
        raise IndexError(f"only integers, slices, Ellipsis, np.newaxis and integer or boolean arrays are "
                         f"valid indices, got {item!r} for axis {axis}") from None
    if not -size <= index < size:
        raise IndexError(f"index {index} is out of bounds for axis {axis} with size {size}")
    return DimSelection(index % size, 1, 1, drop=True)


def out_shape(dims: list[DimSelection]) -> Shape:
    return tuple(d.count for d in dims if not d.drop)
