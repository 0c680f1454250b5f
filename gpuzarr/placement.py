"""The device-independent half of decoding: raw chunk bytes → typed chunks → the output array.
Written against the array namespace `xp` (NumPy or CuPy), so both devices run this same code."""

from __future__ import annotations

import bisect
import functools
import math
from typing import Any, NamedTuple

import numpy as np

from .codecs.chain import CodecChain
from .plan import Gather, Plan


def decode_raw(xp: Any, raw: Any, chain: CodecChain, native: bool = False) -> Any:
    """(N, raw_nbytes) uint8 → (N, *chunk shape) of the chain's dtype (native-endian if `native`):
    the `bytes` codec's view and byte-order swap, then the array→array codecs, each once for the
    whole batch."""
    encoded = chain.array_to_bytes.decode_batch(xp, raw, chain.encoded_shape, chain.encoded_dtype, native)
    return chain.decode_arrays(xp, encoded)


# A chunk in another axis order than the output's (a transpose codec's) whose outermost axis has
# at most PLANES_MAX indices, each a plane of PLANE_MIN bytes or more (a call per plane must pay),
# is copied plane by plane along it (see plane_assign)
PLANES_MAX = 64
PLANE_MIN = 4096


def plane_assign(out: Any, out_sel: tuple, src: Any) -> None:
    """out[out_sel] = src (a basic selection, src of the selected shape). NumPy walks the
    destination in its own order: where src's outermost axis (its largest stride) is another, the
    inner loop lands on a new cache line of src at every step. Copied plane by plane along src's
    outermost axis instead (each plane of src contiguous, or nearly) where it is short: a
    128x128x16 uint8 chunk under transpose (2,0,1) 244 -> 84 us; a 3-D read of 64 of them, one
    thread, 41 -> 29 ms. Long outer axes (a v2 order-F 2-D chunk) gained nothing measurable."""
    if src.ndim > 1:
        region = out[out_sel]  # a view: the selection is basic, and keeps two axes or more
        axis = plane_axis(region, src)
        if axis is not None:
            lead = (slice(None),) * axis
            for i in range(src.shape[axis]):
                region[lead + (i,)] = src[lead + (i,)]
            return
    out[out_sel] = src


def plane_axis(region: Any, src: Any) -> int | None:
    """The axis plane_assign copies `src` into `region` along, or None for one copy."""
    axis = _outermost(src.strides, src.shape)
    planes = src.shape[axis]
    if planes > PLANES_MAX or src.nbytes < PLANE_MIN * planes or axis == _outermost(region.strides, region.shape):
        return None
    return axis


def _outermost(strides: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """The axis of the largest stride among those longer than one."""
    return max(range(len(shape)), key=lambda d: abs(strides[d]) if shape[d] > 1 else -1)


def fill_item(fill: Any, dtype: np.dtype) -> bytes:
    """The fill value as one item of `dtype`, in bytes: what assigning it to an array of that
    dtype writes (the CPU's host fill and the GPU's fill kernel write these)."""
    return np.asarray(fill, dtype=dtype).tobytes()


def place(out: Any, decoded: Any, plan: Plan, first: int, stop: int, present: Any, fill: Any) -> None:
    """Copy chunks first..stop-1 of the plan (decoded[i] is chunk first+i) into their output
    windows, cropping edge chunks; absent chunks write the fill value."""
    for chunk, chunk_sel, out_sel in plan.selections(first, stop):
        i = chunk - first
        if present[i]:
            out[out_sel] = chunk_sel(decoded[i]) if type(chunk_sel) is Gather else decoded[i][chunk_sel]
        else:
            out[out_sel] = fill


def place_block(out: Any, chunks: Any, extent: tuple[int, ...], out_start: tuple[int, ...],
                window: int | None, tiles: tuple | None = None) -> None:
    """Place a box of whole chunks by one strided copy: `chunks` is (k, *chunk shape); the output
    box (in read_batch window `window`) is seen as (e0, c0, e1, c1, …) and transposed to
    (e0, e1, …, c0, c1, …), one tile per chunk. `tiles` None: the chunks fill the box in C order
    (k = prod(extent)); else tiles[d][i] is chunk i's position along dimension d (any order, any
    subset: one indexed assignment). One copy instead of one per chunk: no Python per chunk."""
    ndim = len(extent)
    chunk_shape = chunks.shape[1:]
    region = out[window] if window is not None else out
    region = region[tuple(slice(o, o + e * c) for o, e, c in zip(out_start, extent, chunk_shape))]
    split = region.reshape(tuple(x for e, c in zip(extent, chunk_shape) for x in (e, c)))
    if tiles is None:
        split[...] = chunks.reshape(tuple(extent) + chunk_shape).transpose(
            tuple(x for d in range(ndim) for x in (d, ndim + d)))
        return
    z = _zorder(tuple(extent))
    if z is not None and len(tiles[0]) == len(z.tiles[0]) and all(np.array_equal(t, c) for t, c in zip(tiles, z.tiles)):
        # a whole shard in zarr's Morton order: the box seen with each axis's position as its
        # binary digits is one strided copy too (2-D set, 16 boxes of 8x8 chunks of 128^2: 16 ->
        # 4.4-5.0 ms, as fast as a box in C order; the indexed assignment below is a copy per tile)
        shape = tuple(x for d in range(ndim) for x in ((2,) * z.bits[d] + (chunk_shape[d],)))
        region.reshape(shape)[...] = chunks.reshape((2,) * z.n_bits + chunk_shape).transpose(z.axes)
        return
    split.transpose(tuple(range(0, 2 * ndim, 2)) + tuple(range(1, 2 * ndim, 2)))[tiles] = chunks


class ZOrder(NamedTuple):
    """zarr's Morton order of a box whose extent is a power of two along every axis."""

    tiles: tuple  # per axis, the position of the box's i-th chunk in that order
    bits: tuple[int, ...]  # binary digits of a position, per axis
    n_bits: int
    axes: tuple[int, ...]  # the chunks seen as (2,) * n_bits + chunk shape, transposed to the box's digits


@functools.lru_cache(maxsize=64)
def _zorder(extent: tuple[int, ...]) -> ZOrder | None:
    """The Morton order of a box of `extent` chunks as zarr's sharding codec writes it (bit k
    of a chunk's number is the next unused binary digit, lowest first, of the axes in turn);
    None unless every extent is a power of two."""
    bits = tuple(e.bit_length() - 1 for e in extent)
    if any(e < 1 or 1 << b != e for e, b in zip(extent, bits)):
        return None
    number = np.arange(math.prod(extent))
    tiles = [np.zeros_like(number) for _ in extent]
    digit = {}  # (axis, its digit) → the digit of a chunk's number holding it
    k = 0
    for level in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if level < b:
                tiles[d] |= ((number >> k) & 1) << level
                digit[d, level] = k
                k += 1
    # a number's digits, highest first, are axes 0..k-1 of the chunks' view
    axes = tuple(x for d, b in enumerate(bits) for x in (*(k - 1 - digit[d, level] for level in reversed(range(b))),
                                                          k + d))
    return ZOrder(tuple(tiles), bits, k, axes)


class Box(NamedTuple):
    """Whole chunks of a part of a plan placed by one place_block call: part chunks `members`
    (in C order of the box; a range where they lie in that order in the part) are the box's
    tiles `tiles` (None: all of them, in C order)."""

    members: np.ndarray | range
    tiles: tuple | None
    extent: tuple[int, ...]
    out_start: tuple[int, ...]
    window: int | None


def part_boxes(plan: Plan, first: int, stop: int, chunk_shape: tuple[int, ...], present: np.ndarray) -> list[Box]:
    """Boxes of whole chunks among first..stop-1 (present[i]: chunk first+i has data), each
    placed by one place_block call. A part inside one box of Plan.blocks (chunks in C order,
    as unsharded arrays list them) is cut into the boxes of Plan.block_pieces, ~4 us; any other
    part is looked at whole (whole_box, ~20 array operations)."""
    if present.all():
        found = plan.blocks(chunk_shape)  # computed once per plan
        i = bisect.bisect_right(found.hi, first)
        if i < len(found.lo) and found.lo[i] <= first and stop <= found.hi[i]:
            return [Box(range(lo, hi), None, tuple(extent), tuple(corner), window if plan.batched else None)
                    for lo, hi, extent, corner, window in plan.block_pieces(first, stop, chunk_shape)]
    box = whole_box(plan, first, stop, chunk_shape, present)
    return [] if box is None else [box]


def whole_box(plan: Plan, first: int, stop: int, chunk_shape: tuple[int, ...], present: np.ndarray) -> Box | None:
    """The chunks among first..stop-1 placed whole into one window, whatever their order
    (shards store their chunks in Morton order, where Plan.blocks finds boxes of two): tiles
    of the box they span in the grid. None when fewer than two, or where the read has a step
    or an integer axis. With step 1 a run is whole exactly when it is as long as the chunk,
    and the runs of one window all lie at the same offset from their chunk's grid position,
    so one box holds them all."""
    dims = plan.dims
    if any(d.drop or (d.step != 1).any() for d in dims):
        return None
    span = plan.placements_of(first, stop)
    at, runs = plan.place_chunk[span] - first, plan.place_runs[span]
    whole = present[at]
    for k, (d, c) in enumerate(zip(dims, chunk_shape)):
        whole &= d.count[runs[:, k]] == c
    if plan.batched:  # the first whole chunk's window, chunks placed there only
        window = plan.place_window[span]
        whole &= (window == window[np.argmax(whole)]) & (np.bincount(at, minlength=stop - first)[at] == 1)
    picked = np.flatnonzero(whole)
    if picked.size < 2:
        return None
    grid = plan.chunks[at[picked] + first]
    # only chunks placed once, each at the same offset from its grid corner as the first: so are
    # all of a window of slices, not those an integer array picks (in any order, repeated), which
    # the box's tiles in grid order put in the wrong places
    shift = np.stack([d.out_start[runs[picked, k]] - grid[:, k] * c
                      for k, (d, c) in enumerate(zip(dims, chunk_shape))], axis=1)
    keep = (shift == shift[0]).all(axis=1) & (np.bincount(at, minlength=stop - first)[at[picked]] == 1)
    if not keep.all():
        picked, grid = picked[keep], grid[keep]
        if picked.size < 2:
            return None
    low = grid.min(axis=0)
    extent = tuple((grid.max(axis=0) - low + 1).tolist())
    order = np.argsort(np.ravel_multi_index(tuple((grid - low).T), extent))
    head = int(picked[0])  # where its runs start in the output, less its distance from the box's corner
    corner = [int(d.out_start[runs[head, k]]) - (g - lo) * c
              for k, (d, c, g, lo) in enumerate(zip(dims, chunk_shape, grid[0].tolist(), low.tolist()))]
    full = picked.size == math.prod(extent)
    return Box(at[picked[order]], None if full else tuple((grid - low)[order].T), extent, tuple(corner),
               int(plan.place_window[span][head]) if plan.batched else None)
