"""array→array codecs. Each works on a whole batch, shaped (N, *encoded chunk shape)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

from ..dtypes import NUMPY_DTYPE_ERRORS
from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transpose:
    """`order[i]` names the decoded axis that becomes encoded axis i."""

    order: tuple[int, ...]
    name: str = "transpose"

    @classmethod
    def build(cls, config: dict, ndim: int, where: str) -> Transpose:
        order = config.get("order")
        if isinstance(order, str):  # zarr-python 2-era "C"/"F" spellings
            order = list(range(ndim)) if order == "C" else list(range(ndim))[::-1] if order == "F" else None
        if (not isinstance(order, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in order)
                or sorted(order) != list(range(ndim))):
            raise MetadataError(f"{where}: transpose order {config.get('order')!r} is not a permutation of {ndim} axes")
        return cls(tuple(order))

    def resolve(self, shape: Shape, dtype: np.dtype) -> tuple[Shape, np.dtype]:
        return tuple(shape[i] for i in self.order), dtype

    def encode_fill(self, fill: Any, dtype: np.dtype) -> Any:
        return fill

    def decode_batch(self, xp: Any, encoded: Any, shape: Shape, dtype: np.dtype) -> Any:
        inverse = np.argsort(self.order)
        return xp.transpose(encoded, (0, *(1 + int(i) for i in inverse)))

    @property
    def identity(self) -> bool:
        return self.order == tuple(range(len(self.order)))


def _is_number_type(spec: Any) -> bool:
    """Whether `spec` names a NumPy number type: what these filters compute in."""
    try:
        return np.dtype(spec).kind in "biufc"
    except NUMPY_DTYPE_ERRORS:
        return False


@dataclass(frozen=True, eq=False)
class NumcodecsArray:
    """numcodecs filters that zarr-python 3 runs as array→array codecs (delta, fixedscaleoffset, …).
    They exist only as CPU code in numcodecs, so the batch is decoded chunk by chunk on the host."""

    name: str
    codec: Any
    config: dict

    @classmethod
    def build(cls, codec_id: str, config: dict, dtype: np.dtype, where: str) -> NumcodecsArray:
        config = {"id": codec_id, **config}
        # zarr-python fills these from the array's dtype when the metadata leaves them out
        if codec_id in ("fixedscaleoffset", "quantize", "delta") and config.get("dtype") is None:
            config["dtype"] = str(dtype)
        if codec_id == "astype" and config.get("decode_dtype") is None:
            config["decode_dtype"] = str(dtype)
        for key in ("dtype", "astype", "encode_dtype", "decode_dtype"):
            if config.get(key) is not None and not _is_number_type(config[key]):
                raise MetadataError(f"{where}: numcodecs.{codec_id} {key} {config[key]!r} is not a number type")
        try:
            codec = numcodecs.get_codec(config)
        except (KeyError, ValueError, TypeError) as exc:
            raise UnsupportedFeatureError(f"{where}: numcodecs cannot build {codec_id!r}: {exc}") from None
        return cls(codec_id, codec, config)

    def resolve(self, shape: Shape, dtype: np.dtype) -> tuple[Shape, np.dtype]:
        if self.name == "packbits":
            return (1 + math.ceil(math.prod(shape) / 8),), np.dtype(np.uint8)
        if self.name == "astype":
            return shape, np.dtype(self.config["encode_dtype"])
        astype = self.config.get("astype")
        if self.name in ("delta", "fixedscaleoffset") and astype is not None:
            return shape, np.dtype(astype)
        return shape, dtype

    def encode_fill(self, fill: Any, dtype: np.dtype) -> Any:
        """Unchanged, as gpuzarr has always handed these filters the fill value (only a shard
        below them, which no writer makes, would see the difference)."""
        return fill

    def decode_batch(self, xp: Any, encoded: Any, shape: Shape, dtype: np.dtype) -> Any:
        if xp is not np:
            raise UnsupportedFeatureError(f"codec {self.name!r} has no GPU decoder; read with device='cpu'")
        out = np.empty((encoded.shape[0], *shape), dtype=dtype)
        for i in range(encoded.shape[0]):
            out[i] = self._decode_one(np.ascontiguousarray(encoded[i]), shape)
        return out

    def _decode_one(self, encoded: np.ndarray, shape: Shape) -> np.ndarray:
        """One chunk through numcodecs; a result of another size (the codec's own dtype is not
        the chunk's, or its bytes are corrupt) is refused rather than reshaped."""
        try:
            decoded = np.asarray(self.codec.decode(encoded))
        except (RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
            raise CorruptDataError(f"cannot decode {self.name} ({exc})") from None
        if decoded.size != math.prod(shape):
            raise CorruptDataError(f"{self.name} decodes a chunk to {decoded.size} {decoded.dtype} items, the chunk "
                                   f"holds {math.prod(shape)}")
        return decoded.reshape(shape)
