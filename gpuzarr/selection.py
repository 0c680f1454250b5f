"""Basic indexing (ints, slices with any step, Ellipsis) normalised per dimension."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DimSelection:
    """Elements start, start+step, … (`count` of them); `drop` for an integer index."""

    start: int
    step: int
    count: int
    drop: bool = False


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
    return [_one(s, n, axis) for axis, (s, n) in enumerate(zip(selection, shape))]


def _one(item: Any, size: int, axis: int) -> DimSelection:
    if isinstance(item, slice):
        start, stop, step = item.indices(size)
        count = len(range(start, stop, step))
        # with at most one element the step is moot; dropping it keeps huge steps (>= 2**63) out
        # of the int64 planning tables
        return DimSelection(start, step if count > 1 else 1, count)
    if isinstance(item, (bool, np.bool_)):
        raise IndexError(f"a boolean index is a mask, not a position (axis {axis}); gpuzarr reads "
                         f"integers, slices and Ellipsis")
    try:
        index = operator.index(item)
    except TypeError:
        raise IndexError(f"only integers, slices and Ellipsis are valid indices, got {item!r} "
                         f"for axis {axis}") from None
    if not -size <= index < size:
        raise IndexError(f"index {index} is out of bounds for axis {axis} with size {size}")
    return DimSelection(index % size, 1, 1, drop=True)


def out_shape(dims: list[DimSelection]) -> Shape:
    return tuple(d.count for d in dims if not d.drop)
