"""array→bytes codecs other than sharding: `bytes` (fixed-size items) and `vlen-*` (variable length)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

from ..dtypes import is_ml_dtype
from ..errors import CorruptDataError, MetadataError

Shape = tuple[int, ...]
_NATIVE = "little" if sys.byteorder == "little" else "big"
_NUMPY_SWAPS = "iufcmMU"  # kinds whose casts between byte orders NumPy does as a pure byte swap


def swap_unit(dtype: np.dtype) -> int:
    """Size of the unit a byte-order swap reverses: complex numbers swap each half, UTF-32
    strings each code point."""
    if dtype.kind == "c":
        return dtype.itemsize // 2
    return 4 if dtype.kind == "U" else dtype.itemsize


def _is_bytes(dtype: np.dtype) -> bool:
    """Raw or byte-string items: no byte order (ml_dtypes' numbers share kind 'V' but have one)."""
    return dtype.kind in "SV" and not is_ml_dtype(dtype)


def held_order(dtype: np.dtype) -> str | None:
    """The byte order `dtype` holds its multi-byte scalars in (None: nothing to swap). A struct
    counts as its first multi-byte field: v3 struct fields are all native, and a v2 dtype's
    stored order is the dtype's own: the v2 chain gives its `bytes` codec this same order."""
    if dtype.fields is not None:
        orders = (held_order(dtype.fields[name][0].base) for name in dtype.names)
        return next((order for order in orders if order is not None), None)
    if swap_unit(dtype) <= 1 or _is_bytes(dtype):
        return None
    return _NATIVE if dtype.byteorder in "=|" else ("little" if dtype.byteorder == "<" else "big")


@dataclass(frozen=True)
class Bytes:
    """Fixed-size items in C order; `endian` is the stored byte order (None: 1-byte types)."""

    endian: str | None
    name: str = "bytes"

    @classmethod
    def build(cls, config: dict, dtype: np.dtype, where: str) -> Bytes:
        endian = config.get("endian")
        if endian not in (None, "little", "big"):
            raise MetadataError(f"{where}: bytes codec endian {endian!r} must be 'little' or 'big'")
        multibyte = dtype.itemsize > 1 and dtype.kind != "b" and not _is_bytes(dtype)
        if endian is None and multibyte and dtype.fields is None:
            raise MetadataError(f"{where}: bytes codec needs an endian for {dtype}")
        return cls(endian)

    def raw_nbytes(self, shape: Shape, dtype: np.dtype) -> int:
        return math.prod(shape) * dtype.itemsize

    def needs_swap(self, dtype: np.dtype) -> bool:
        held = held_order(dtype)
        return self.endian is not None and held is not None and held != self.endian

    def stored_view(self, dtype: np.dtype) -> np.dtype:
        """The dtype that views stored bytes as they lie, for a NumPy copy into `dtype` that
        swaps bytes as it copies (its byte-swapping loops, far faster than the reversed byte
        view decode_batch copies on a GPU): `dtype` itself where no swap is needed, None where
        NumPy's casts cannot swap it (structs, ml_dtypes)."""
        if not self.needs_swap(dtype):
            return dtype
        if dtype.fields is not None or dtype.kind not in _NUMPY_SWAPS or is_ml_dtype(dtype):
            return None
        return dtype.newbyteorder(">" if self.endian == "big" else "<")

    def decode_batch(self, xp: Any, raw: Any, shape: Shape, dtype: np.dtype, native: bool = False) -> Any:
        """`raw` is (N, raw_nbytes) uint8; returns (N, *shape) of `dtype` (of its native-order twin
        when `native`: CuPy has no other), swapping bytes where the stored order differs: NumPy
        swaps as it copies (stored_view), CuPy copies a reversed view once."""
        n = raw.shape[0]
        if native and dtype.fields is None:
            dtype = dtype.newbyteorder("=")
        if self.needs_swap(dtype):
            if dtype.fields is not None:
                if xp is not np:
                    raise MetadataError("big-endian structured data types are read on the CPU only")
                return raw.view(dtype.newbyteorder()).astype(dtype).reshape((n, *shape))
            stored = self.stored_view(dtype) if xp is np else None
            if stored is not None:
                return raw.view(stored).astype(dtype).reshape((n, *shape))
            unit = swap_unit(dtype)
            raw = xp.ascontiguousarray(raw.reshape(n, -1, unit)[:, :, ::-1]).reshape(n, -1)
        return raw.view(dtype).reshape((n, *shape))


@dataclass(frozen=True)
class Vlen:
    """vlen-utf8 / vlen-bytes: u32le item count, then u32le length + bytes per item."""

    kind: str  # "utf8" or "bytes"
    name: str = "vlen"

    def decode_one(self, data: Any, shape: Shape, out_dtype: np.dtype) -> np.ndarray:
        self._check_count(memoryview(data).cast("B"), math.prod(shape))
        codec = numcodecs.VLenUTF8() if self.kind == "utf8" else numcodecs.VLenBytes()
        try:
            items = codec.decode(data)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise CorruptDataError(f"bad vlen-{self.kind} chunk ({exc})") from None
        return items.reshape(shape).astype(out_dtype) if out_dtype != items.dtype else items.reshape(shape)

    def _check_count(self, view: memoryview, n_items: int) -> None:
        """The item count heads the chunk, and numcodecs allocates that many items before it
        reads one: a count other than the chunk's is refused first."""
        if len(view) < 4:
            raise CorruptDataError(f"vlen-{self.kind} chunk of {len(view)} bytes has no item count")
        count = int.from_bytes(view[:4], "little")
        if count != n_items:
            raise CorruptDataError(f"vlen-{self.kind} chunk holds {count} items, the chunk needs {n_items}")
