"""sharding_indexed: a shard is a small key-value store of inner chunks plus an index of
(offset, nbytes) pairs. The batched pipeline reads indexes itself (fetch.py) and never decodes a
whole shard; `decode_shard` serves only chains that wrap sharding in other codecs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError

if TYPE_CHECKING:
    from .chain import CodecChain

Shape = tuple[int, ...]
EMPTY = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Sharding:
    chunk_shape: Shape
    inner: CodecChain
    index_location: str
    index_chain: CodecChain  # bound to the index array (chunks_per_shard + [2]) of uint64
    name: str = "sharding_indexed"

    def chunks_per_shard(self, shard_shape: Shape) -> Shape:
        return tuple(s // c for s, c in zip(shard_shape, self.chunk_shape))

    def index_nbytes(self, shard_shape: Shape) -> int:
        checksums = sum(CHECKSUM_BYTES[c.name] for c in self.index_chain.bytes_to_bytes)
        return 16 * math.prod(self.chunks_per_shard(shard_shape)) + checksums

    def decode_index(self, raw: Any, shard_shape: Shape, key: str, shard_nbytes: int | None) -> np.ndarray:
        """Verify and parse an encoded index into an (n, 2) uint64 array of (offset, nbytes).
        Entries are checked against the index itself and, when known, the shard's size, so no
        later step allocates or reads from an untrusted size."""
        view = memoryview(raw).cast("B")
        expected = self.index_nbytes(shard_shape)
        if len(view) != expected:
            raise CorruptDataError(f"{key}: shard index is {len(view)} bytes, expected {expected} (truncated shard?)")
        from .chain import decode_chunk

        index = decode_chunk(self.index_chain, view, 0, f"{key}: shard index").reshape(-1, 2)
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
        past = ends > np.iinfo(np.int64).max  # reads count bytes in int64
        if past.any():
            where = int(np.flatnonzero(~empty)[np.argmax(past)])
            raise CorruptDataError(f"{key}: shard index entry {where} (offset {int(offsets[where])}, "
                                   f"{int(sizes[where])} bytes) ends past byte 2**63 - 1")
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


# checksum codecs an index may carry, with the bytes each adds (the index must have a fixed size)
CHECKSUM_BYTES = {"crc32c": 4, "crc32": 4, "adler32": 4, "fletcher32": 4, "jenkins_lookup3": 4}


def check_index_codecs(chain: CodecChain, where: str) -> None:
    """The index must have a fixed encoded size, known before it is read: transposes, `bytes`,
    then only checksums."""
    from .array_to_array import Transpose
    from .array_to_bytes import Bytes

    if (not all(isinstance(c, Transpose) for c in chain.array_to_array)
            or not isinstance(chain.array_to_bytes, Bytes)
            or not all(c.name in CHECKSUM_BYTES for c in chain.bytes_to_bytes)):
        raise UnsupportedFeatureError(f"{where}: shard index codecs {chain.describe()} have no fixed size "
                                      f"(supported: transpose, bytes, checksums)")


def check_shard_shape(shard_shape: Shape, chunk_shape: Shape, where: str) -> None:
    if len(chunk_shape) != len(shard_shape) or any(
        c <= 0 or s % c for s, c in zip(shard_shape, chunk_shape)
    ):
        raise MetadataError(f"{where}: sharding chunk_shape {list(chunk_shape)} must divide the shard shape "
                            f"{list(shard_shape)} in every dimension")
