"""sharding_indexed: a shard is a small key-value store of inner chunks plus an index of
(offset, nbytes) pairs. The batched pipeline reads indexes itself (fetch.py) and never decodes a
whole shard; `decode_shard` serves only chains that wrap sharding in other codecs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError
from .array_to_bytes import Bytes
from .bytes_to_bytes import strip_crc32c

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
            why = "truncated shard?" if len(view) < expected else "the store sent more bytes than the range asked for"
            raise CorruptDataError(f"{key}: shard index is {len(view)} bytes, expected {expected} ({why})")
        from .chain import decode_chunk

        index = decode_chunk(self.index_chain, view, 0, f"{key}: shard index").reshape(-1, 2)
        offsets, sizes = index[:, 0], index[:, 1]
        high = self._chunks_end(expected, shard_nbytes)
        empty, faults = self._faults(index, expected, high)
        if faults["marker"].any():
            raise CorruptDataError(f"{key}: shard index entry {int(np.argmax(faults['marker']))} has the empty-chunk "
                                   f"offset marker with a real size")
        if faults["overflow"].any():
            raise CorruptDataError(f"{key}: shard index entry overflows 64 bits")
        if faults["past"].any():
            where = int(np.argmax(faults["past"]))
            raise CorruptDataError(f"{key}: shard index entry {where} (offset {int(offsets[where])}, "
                                   f"{int(sizes[where])} bytes) ends past byte 2**63 - 1")
        if faults["before"].any():
            raise CorruptDataError(f"{key}: shard index entry overlaps the index at the start of the shard")
        if faults["after"].any():
            where = int(np.argmax(faults["after"]))
            raise CorruptDataError(f"{key}: shard index entry {where} (offset {int(offsets[where])}, "
                                   f"{int(sizes[where])} bytes) points past the end of the "
                                   f"{'shard' if self.index_location == 'start' else 'chunk data'} "
                                   f"({high} bytes)")
        index = index.copy()
        index[empty] = EMPTY
        return index

    def decode_indexes(self, raws: list, shard_shape: Shape, keys: list[str],
                       shard_nbytes: list[int | None]) -> list[np.ndarray]:
        """decode_index of each index, as one array program where the index chain is the usual
        (bytes, then crc32c codecs: what zarr-python and tensorstore write) and every index has
        its size: each checksum is still verified alone (one C call), the entries parsed and
        checked at once (16 indexes of the 2-D set: ~1.2 ms one by one, ~78 us each, what a read
        with an empty index cache pays per shard). An index that fails is decoded alone, which
        raises its error."""
        expected = self.index_nbytes(shard_shape)
        chain = self.index_chain
        views = [memoryview(raw).cast("B") for raw in raws]
        high = [self._chunks_end(expected, n) for n in shard_nbytes]
        if (len(views) < 2 or chain.array_to_array or not isinstance(chain.array_to_bytes, Bytes)
                or any(c.name != "crc32c" for c in chain.bytes_to_bytes) or any(len(v) != expected for v in views)
                or any(h is not None and h < 0 for h in high)):  # (a shard shorter than its index)
            return [self.decode_index(v, shard_shape, k, n) for v, k, n in zip(views, keys, shard_nbytes)]
        bodies = []
        for view, key, nbytes in zip(views, keys, shard_nbytes):
            body = view
            try:
                for _ in chain.bytes_to_bytes:
                    body = strip_crc32c(body, "crc32c")
            except CorruptDataError:
                self.decode_index(view, shard_shape, key, nbytes)  # raises, naming the index
            bodies.append(body)
        raw = np.frombuffer(bytearray().join(bodies), np.uint8).reshape(len(bodies), -1)  # writable: emptied below
        tables = chain.array_to_bytes.decode_batch(np, raw, chain.encoded_shape, chain.encoded_dtype)
        tables = tables.reshape(len(bodies), -1, 2)
        empty, faults = self._faults(tables, expected, np.array([2**64 - 1 if h is None else h for h in high],
                                                                np.uint64)[:, None])
        bad = np.logical_or.reduce([f.any(axis=1) for f in faults.values()])
        if bad.any():
            i = int(np.argmax(bad))
            self.decode_index(views[i], shard_shape, keys[i], shard_nbytes[i])  # raises its error
            raise CorruptDataError(f"{keys[i]}: shard index entries fail their checks")
        tables[empty] = EMPTY
        return [table.copy() for table in tables]

    def _chunks_end(self, index_nbytes: int, shard_nbytes: int | None) -> int | None:
        """Where the bytes a shard's chunks may lie in end (None where the shard's size is not known)."""
        if self.index_location == "start" or shard_nbytes is None:
            return shard_nbytes
        return shard_nbytes - index_nbytes

    def _faults(self, index: np.ndarray, index_nbytes: int, high: Any) -> tuple[np.ndarray, dict]:
        """Entries of (..., 2) index tables that are empty, and the masks of those that are wrong:
        the empty marker as an offset with a real size, an end past 2**64 or 2**63 - 1, a start
        inside the index at the shard's start, an end past `high` (the span's end; an int, None,
        or an array that broadcasts against the entries)."""
        offsets, sizes = index[..., 0], index[..., 1]
        empty = sizes == EMPTY
        live = ~empty
        ends = offsets + sizes  # wraps where it overflows
        low = index_nbytes if self.index_location == "start" else 0
        faults = {"marker": (offsets == EMPTY) & live, "overflow": (ends < offsets) & live,
                  "past": (ends > np.uint64(np.iinfo(np.int64).max)) & live,
                  "before": (offsets < np.uint64(low)) & live}
        if high is None:
            faults["after"] = np.zeros_like(live)
        elif isinstance(high, int) and high < 0:  # a shard shorter than its index: nothing fits
            faults["after"] = live
        else:
            faults["after"] = (ends > (np.uint64(high) if isinstance(high, int) else high)) & live
        return empty, faults

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
