"""The device-independent half of decoding: raw chunk bytes → typed chunks → the output array.
Written against the array namespace `xp` (NumPy or CuPy), so both devices run this same code."""

from __future__ import annotations

from typing import Any

from .codecs.chain import CodecChain
from .plan import Gather, Plan


def decode_raw(xp: Any, raw: Any, chain: CodecChain, native: bool = False) -> Any:
    """(N, raw_nbytes) uint8 → (N, *chunk shape) of the chain's dtype (native-endian if `native`):
    the `bytes` codec's view and byte-order swap, then the array→array codecs, each once for the
    whole batch."""
    encoded = chain.array_to_bytes.decode_batch(xp, raw, chain.encoded_shape, chain.encoded_dtype, native)
    return chain.decode_arrays(xp, encoded)


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
                window: int | None) -> None:
    """Place a box of whole chunks by one strided copy: `chunks` is (prod(extent), *chunk shape),
    the box's chunks in C order; the output box (in read_batch window `window`) is seen as
    (e0, c0, e1, c1, …) and the chunks as (e0, e1, …, c0, c1, …) transposed to match. One copy
    instead of one per chunk: longer contiguous runs in the output, and no Python per chunk."""
    ndim = len(extent)
    chunk_shape = chunks.shape[1:]
    region = out[window] if window is not None else out
    region = region[tuple(slice(o, o + e * c) for o, e, c in zip(out_start, extent, chunk_shape))]
    split = region.reshape(tuple(x for e, c in zip(extent, chunk_shape) for x in (e, c)))
    order = tuple(x for d in range(ndim) for x in (d, ndim + d))
    split[...] = chunks.reshape(tuple(extent) + chunk_shape).transpose(order)
