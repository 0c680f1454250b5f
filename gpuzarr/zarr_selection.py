"""zarr-python hands a codec pipeline one (chunk key, chunk selection, output selection) per
chunk; gpuzarr reads a whole selection in one pass. This rebuilds the one selection behind a
batch, and proves it: the batch is read as that selection only if its chunks are distinct and
its pieces cover the output exactly once, each element mapped as the selection maps it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .indexing import Query, parse
from .metadata import ArrayMetadata, KeyEncoding

Shape = tuple[int, ...]


class Untranslatable(Exception):
    """A batch that is not one orthogonal or pointwise selection of one array (zarr-python's
    own pipeline reads it)."""


@dataclass(frozen=True)
class Translated:
    prefix: str  # the array's path in the store
    keys: list[str]  # each chunk's key below the prefix, in batch order
    query: Query


def split_key(path: str, encoding: KeyEncoding, ndim: int) -> tuple[str, str, tuple[int, ...]]:
    """A chunk's store path → (array prefix, key below it, grid coordinates)."""
    if encoding.separator == "/":
        parts = ndim + (encoding.kind == "default") or 1
        pieces = path.rsplit("/", parts)
        prefix = pieces[0] if len(pieces) > parts else ""
        tail = pieces[-parts:]
    else:
        prefix, _, last = path.rpartition("/")
        tail = last.split(encoding.separator)
    if encoding.kind == "default":
        if tail[0] != "c":
            raise Untranslatable(f"{path!r} is not a chunk key of this array")
        tail = tail[1:]
    elif ndim == 0:
        tail = []
    try:
        coords = tuple(int(t) for t in tail)
    except ValueError:
        raise Untranslatable(f"{path!r} is not a chunk key of this array") from None
    key = path[len(prefix) + 1:] if prefix else path
    if len(coords) != ndim or encoding.key(coords) != key:
        raise Untranslatable(f"{path!r} is not a chunk key of this array")
    return prefix, key, coords


def translate(batch: list, out_shape: Shape, drop_axes: tuple[int, ...], meta: ArrayMetadata) -> Translated:
    """The one selection whose read fills `out_shape` exactly as zarr-python's pipeline fills it
    from `batch` (its read's (byte getter, chunk spec, chunk selection, output selection, ...)
    tuples); Untranslatable if there is none."""
    ndim = len(meta.shape)
    prefix, keys, coords = "", [], []
    for item in batch:
        p, key, c = split_key(item[0].path, meta.key_encoding, ndim)
        if keys and p != prefix:
            raise Untranslatable("the batch holds chunks of more than one array")
        prefix = p
        keys.append(key)
        coords.append(c)
    if len(set(coords)) != len(coords):
        raise Untranslatable("the batch names a chunk twice")
    first = batch[0][2]
    pointwise = (ndim >= 2 and isinstance(first, tuple) and len(first) == ndim
                 and all(isinstance(s, np.ndarray) and s.ndim == 1 for s in first))
    origins = np.asarray(coords, dtype=np.int64).reshape(len(coords), ndim) * np.asarray(meta.chunk_shape, np.int64)
    build = _pointwise if pointwise else _orthogonal
    selection, mode = build(batch, origins, out_shape, drop_axes, ndim)
    query = parse(selection, meta.shape, mode)
    if query.shape != out_shape:
        raise Untranslatable(f"the batch's selection reads {query.shape}, not the output's {out_shape}")
    return Translated(prefix, keys, query)


def _orthogonal(batch: list, origins: np.ndarray, out_shape: Shape, drop_axes: tuple[int, ...],
                ndim: int) -> tuple[tuple, str]:
    """Each chunk's piece is a product of per-axis index lists (slices, integers, np.ix_ meshes):
    per output axis, the array index of every output position, checked to be one function."""
    kept: list[dict] = [{} for _ in out_shape]  # output axis → {(positions, indices)}: equal ranges once
    dropped: list[set] = [set() for _ in range(ndim)]
    elements = 0
    for (_, spec, chunk_sel, out_sel, _), origin in zip(batch, origins.tolist()):
        sels = chunk_sel if isinstance(chunk_sel, tuple) else (chunk_sel,)
        outs = out_sel if isinstance(out_sel, tuple) else (out_sel,)
        if len(sels) != ndim:
            raise Untranslatable(f"a chunk selection has {len(sels)} axes, the array {ndim}")
        k, count = 0, 1
        for d, sel in enumerate(sels):
            if isinstance(sel, (int, np.integer)) or (isinstance(sel, np.ndarray) and d in drop_axes):
                index = np.asarray(sel).reshape(-1)
                if index.size != 1:
                    raise Untranslatable("a dropped axis selects more than one index")
                dropped[d].add(origin[d] + int(index[0]))
                continue
            indices = _indices(sel, spec.shape[d], origin[d])
            if k >= len(outs):
                raise Untranslatable("the output selection has fewer axes than the chunk selection keeps")
            positions = _indices(outs[k], out_shape[k], 0)
            if len(positions) != len(indices):
                raise Untranslatable("a chunk and its output selection differ in length")
            ranges = isinstance(positions, range) and isinstance(indices, range)
            kept[k][(positions, indices) if ranges else len(kept[k])] = (positions, indices)
            count *= len(indices)
            k += 1
        if k != len(outs) or k != len(out_shape):
            raise Untranslatable("the output selection and the output differ in axes")
        elements += count
    if elements != math.prod(out_shape):
        raise Untranslatable("the chunks' pieces do not cover the output exactly once")
    if any(len(v) > 1 for v in dropped):
        raise Untranslatable("an integer-indexed axis takes different indices in different chunks")
    axes: list[Any] = []
    k = 0
    for d in range(ndim):
        if dropped[d]:
            axes.append(dropped[d].pop())
        else:
            axes.append(_axis(kept[k], out_shape[k]))
            k += 1
    mode = "oindex" if any(isinstance(a, np.ndarray) for a in axes) else "getitem"
    return tuple(axes), mode


def _indices(sel: Any, length: int, origin: int) -> range | np.ndarray:
    if isinstance(sel, slice):
        r = range(*sel.indices(length))
        return range(r.start + origin, r.stop + origin, r.step)
    if isinstance(sel, np.ndarray):
        flat = np.flatnonzero(sel) if sel.dtype == bool else sel.reshape(-1).astype(np.int64, copy=False)
        return flat + origin if origin else flat
    raise Untranslatable(f"a selection of type {type(sel).__name__}")


def _axis(pieces: dict, length: int) -> slice | np.ndarray:
    """The array index of each output position along one axis: a slice when evenly spaced."""
    pairs = list(pieces.values())
    p0, i0 = pairs[0]
    if isinstance(p0, range) and isinstance(i0, range) and i0.step > 0:
        # slices only (basic selections): one affine map for every piece, with pieces inside
        # [0, length) and chunks distinct, covers the axis once (see translate)
        step, shift = i0.step, i0.start - p0.start * i0.step
        if all(type(p) is range and type(i) is range and p.step == 1 and i.step == step
               and i.start - p.start * step == shift for p, i in pairs):
            return slice(shift, shift + step * (length - 1) + 1, step)
    pos = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in pieces.values()])
    idx = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in pieces.values()])
    index = np.full(length, -1, dtype=np.int64)
    index[pos] = idx
    if (index[pos] != idx).any() or (index < 0).any():
        raise Untranslatable("the chunks' pieces do not map the output as one selection")
    if length == 1:
        return slice(int(index[0]), int(index[0]) + 1)
    step = int(index[1] - index[0])
    if step > 0 and (np.diff(index) == step).all():
        return slice(int(index[0]), int(index[-1]) + 1, step)
    return index


def _pointwise(batch: list, origins: np.ndarray, out_shape: Shape, drop_axes: tuple[int, ...],
               ndim: int) -> tuple[tuple, str]:
    """Coordinate and mask selections: per chunk, points (one index array per axis) and where in
    the flat output they go."""
    if len(out_shape) != 1 or drop_axes:
        raise Untranslatable("a pointwise batch whose output is not flat")
    n = out_shape[0]
    positions, points = [], []
    for (_, _, chunk_sel, out_sel, _), origin in zip(batch, origins):
        if not (isinstance(chunk_sel, tuple) and len(chunk_sel) == ndim
                and all(isinstance(s, np.ndarray) and s.ndim == 1 and s.dtype != bool for s in chunk_sel)):
            raise Untranslatable("a batch mixing pointwise and other selections")
        where = _indices(out_sel, n, 0)
        pos = np.arange(where.start, where.stop, where.step) if isinstance(where, range) else where
        if any(s.size != pos.size for s in chunk_sel):
            raise Untranslatable("a chunk's points and output positions differ in number")
        positions.append(pos)
        points.append(np.stack([s.astype(np.int64, copy=False) for s in chunk_sel], axis=1) + origin)
    pos = np.concatenate(positions)
    seen = np.zeros(n, dtype=bool)
    seen[pos] = True
    if pos.size != n or not seen.all():
        raise Untranslatable("the chunks' points do not cover the output exactly once")
    coords = np.empty((n, ndim), dtype=np.int64)
    coords[pos] = np.concatenate(points)
    return tuple(coords.T), "vindex"
