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
