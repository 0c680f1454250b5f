"""sharding_indexed: a shard is a small key-value store of inner chunks plus an index of
(offset, nbytes) pairs. The batched pipeline reads indexes itself (fetch.py) and never decodes a
whole shard; `decode_shard` serves only chains that wrap sharding in other codecs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError
from .bytes_to_bytes import Crc32c, strip_crc32c

if TYPE_CHECKING:
    from .chain import CodecChain

Shape = tuple[int, ...]
EMPTY = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Sharding:
    chunk_shape: Shape
    inner: CodecChain
    index_location: str
    index_crc32c: bool
    index_big_endian: bool
    name: str = "sharding_indexed"

    def chunks_per_shard(self, shard_shape: Shape) -> Shape:
        return tuple(s // c for s, c in zip(shard_shape, self.chunk_shape))

    def index_nbytes(self, shard_shape: Shape) -> int:
        return 16 * math.prod(self.chunks_per_shard(shard_shape)) + (4 if self.index_crc32c else 0)

    def decode_index(self, raw: Any, shard_shape: Shape, key: str, shard_nbytes: int | None) -> np.ndarray:
        """Verify and parse an encoded index into an (n, 2) uint64 array of (offset, nbytes).
        Entries are checked against the index itself and, when known, the shard's size, so no
        later step allocates or reads from an untrusted size."""
        view = memoryview(raw).cast("B")
        expected = self.index_nbytes(shard_shape)
        if len(view) != expected:
            raise CorruptDataError(f"{key}: shard index is {len(view)} bytes, expected {expected} (truncated shard?)")
        if self.index_crc32c:
            view = strip_crc32c(view, f"{key}: shard index")
        index = np.frombuffer(view, dtype=">u8" if self.index_big_endian else "<u8").astype(np.uint64)
        index = index.reshape(-1, 2)
        offsets, sizes = index[:, 0], index[:, 1]
        empty = sizes == EMPTY
        bad_marker = (offsets == EMPTY) & ~empty
        if bad_marker.any():
            raise CorruptDataError(f"{key}: shard index entry {int(np.argmax(bad_marker))} has the empty-chunk "
                                   f"offset marker with a real size")
        live_off, live_size = offsets[~empty], sizes[~empty]
        ends = live_off + live_size
        if (ends < live_off).any():
            raise CorruptDataError(f"{key}: shard index entry overflows 64 bits")
        if self.index_location == "start":
            low, high = expected, shard_nbytes
        else:
            low, high = 0, None if shard_nbytes is None else shard_nbytes - expected
        if (live_off < low).any():
            raise CorruptDataError(f"{key}: shard index entry overlaps the index at the start of the shard")
        if high is not None and (ends > high).any():
            where = int(np.flatnonzero(~empty)[np.argmax(ends > high)])
            raise CorruptDataError(f"{key}: shard index entry {where} (offset {int(offsets[where])}, "
                                   f"{int(sizes[where])} bytes) points past the end of the "
                                   f"{'shard' if self.index_location == 'start' else 'chunk data'} "
                                   f"({high} bytes)")
        index = index.copy()
        index[empty] = EMPTY
        return index

    def decode_shard(self, data: Any, shape: Shape, dtype: np.dtype, fill: Any, key: str) -> np.ndarray:
        """Decode a whole shard held in memory (used only when sharding sits inside other codecs)."""
        from .chain import decode_chunk

        view = memoryview(data).cast("B")
        n_index = self.index_nbytes(shape)
        if len(view) < n_index:
            raise CorruptDataError(f"{key}: shard of {len(view)} bytes is shorter than its index")
        raw_index = view[:n_index] if self.index_location == "start" else view[len(view) - n_index:]
        index = self.decode_index(raw_index, shape, key, len(view))
        out = np.full(shape, fill, dtype=dtype)
        grid = self.chunks_per_shard(shape)
        for i, (offset, nbytes) in enumerate(index):
            if nbytes == EMPTY:
                continue
            coords = np.unravel_index(i, grid)
            region = tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, self.chunk_shape))
            out[region] = decode_chunk(self.inner, view[int(offset):int(offset) + int(nbytes)], fill, key)
        return out


def parse_index_codecs(chain: CodecChain, where: str) -> tuple[bool, bool]:
    """The index must have a fixed encoded size: `bytes` plus an optional crc32c. Returns
    (has_crc32c, big_endian)."""
    from .array_to_bytes import Bytes

    if chain.array_to_array or not isinstance(chain.array_to_bytes, Bytes):
        raise UnsupportedFeatureError(f"{where}: shard index codecs other than bytes + crc32c are not supported")
    bb = chain.bytes_to_bytes
    if len(bb) > 1 or any(not isinstance(c, Crc32c) for c in bb):
        raise UnsupportedFeatureError(f"{where}: shard index codecs other than bytes + crc32c are not supported")
    return bool(bb), chain.array_to_bytes.endian == "big"


def check_shard_shape(shard_shape: Shape, chunk_shape: Shape, where: str) -> None:
    if len(chunk_shape) != len(shard_shape) or any(
        c <= 0 or s % c for s, c in zip(shard_shape, chunk_shape)
    ):
        raise MetadataError(f"{where}: sharding chunk_shape {list(chunk_shape)} must divide the shard shape "
                            f"{list(shard_shape)} in every dimension")
