"""`gpuzarr.CodecPipeline`: zarr-python's reads, through gpuzarr. Select it with
`zarr.config.set({"codec_pipeline.path": "gpuzarr.CodecPipeline"})` or
`ZARR_CODEC_PIPELINE__PATH=gpuzarr.CodecPipeline`.

A read's whole batch of chunks becomes one gpuzarr read (one plan, coalesced fetches, one
batched decode on every core, or on the GPU when zarr-python's output is a CuPy array under
`zarr.config.enable_gpu()`). Writes, encode/decode of single chunks, and what gpuzarr does not
read go to zarr-python's own BatchedCodecPipeline of the same codecs: each such read is counted
in `FALLBACKS` (by reason) and logged at debug level; with `codec_pipeline.strict` set it
raises instead."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from zarr.abc.codec import Codec
from zarr.abc.codec import CodecPipeline as _ZarrCodecPipeline
from zarr.codecs._v2 import V2Codec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config

from .array import Array
from .errors import GpuzarrError, UnsupportedFeatureError
from .metadata import ArrayMetadata, parse_v2_array, parse_v3
from .pipeline import Settings
from .report import ReadReport
from .zarr_selection import Untranslatable, translate
from .zarr_store import ZarrStore, gpuzarr_store

log = logging.getLogger("gpuzarr.zarr")
FALLBACKS: Counter = Counter()  # reads handed to zarr-python's own pipeline, by reason
# Local reads of at most this many output bytes run on zarr-python's event loop thread: a hop to
# a worker thread costs ~0.15 ms, as much as the read of a chunk or two from the page cache
INLINE_BYTES = 1 << 20


class CodecPipeline(_ZarrCodecPipeline):
    """A zarr-python codec pipeline for one array; see the module docstring."""

    __module__ = "gpuzarr"  # zarr-python finds pipelines by module + class name: gpuzarr.CodecPipeline

    def __init__(self, metadata: Any, store: Any, fallback: BatchedCodecPipeline):
        self.metadata, self.store, self.fallback = metadata, store, fallback
        self._arrays: dict[tuple, tuple[Any, Array]] = {}
        self._loop_arrays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> its own _arrays
        try:
            self._meta: ArrayMetadata | None = _gpuzarr_metadata(metadata, store)
            self._unsupported = ""
        except GpuzarrError as exc:  # refused at the first read under strict: zarr-python would
            # take an UnsupportedFeatureError (a NotImplementedError) here for "use from_codecs"
            self._meta, self._unsupported = None, f"gpuzarr does not read this array ({exc})"

    @classmethod
    def from_array_metadata_and_store(cls, array_metadata: Any, store: Any) -> CodecPipeline:
        return cls(array_metadata, store, BatchedCodecPipeline.from_codecs(_codecs(array_metadata)))

    @classmethod
    def from_codecs(cls, codecs: Iterable[Codec]) -> BatchedCodecPipeline:
        """Without an array and its store (a shard's inner chunks, a bare codec list) there is no
        batch for gpuzarr to read: zarr-python's pipeline serves."""
        return BatchedCodecPipeline.from_codecs(codecs)

    def __reduce__(self) -> tuple:
        return _rebuild, (self.metadata, self.store)

    def __iter__(self) -> Iterator[Codec]:
        return iter(self.fallback)

    def evolve_from_array_spec(self, array_spec: Any) -> CodecPipeline:
        evolved = type(self).__new__(type(self))
        evolved.__dict__.update(self.__dict__, fallback=self.fallback.evolve_from_array_spec(array_spec), _arrays={},
                                _loop_arrays=weakref.WeakKeyDictionary())
        return evolved

    @property
    def supports_partial_decode(self) -> bool:
        return self.fallback.supports_partial_decode

    @property
    def supports_partial_encode(self) -> bool:
        return self.fallback.supports_partial_encode

    def validate(self, **kwargs: Any) -> None:
        self.fallback.validate(**kwargs)

    def compute_encoded_size(self, byte_length: int, array_spec: Any) -> int:
        return self.fallback.compute_encoded_size(byte_length, array_spec)

    async def decode(self, chunk_bytes_and_specs: Iterable) -> Iterable:
        return await self.fallback.decode(chunk_bytes_and_specs)

    async def encode(self, chunk_arrays_and_specs: Iterable) -> Iterable:
        return await self.fallback.encode(chunk_arrays_and_specs)

    async def write(self, batch_info: Iterable, value: Any, drop_axes: tuple[int, ...] = ()) -> None:
        await self.fallback.write(batch_info, value, drop_axes)

    async def read(self, batch_info: Iterable, out: Any, drop_axes: tuple[int, ...] = ()) -> Any:
        batch = list(batch_info)
        if not batch:
            return ()
        target = out.as_ndarray_like()
        try:
            if self._meta is None:
                raise Untranslatable(self._unsupported)
            if target.dtype != self._meta.data_type.dtype and self._meta.data_type.dtype.fields is not None:
                raise Untranslatable(f"fields of a structured dtype ({target.dtype} from "
                                     f"{self._meta.data_type.dtype})")
            translated = translate(batch, tuple(target.shape), tuple(drop_axes), self._meta)
        except Untranslatable as exc:
            return await self._fallback_read(str(exc), batch, out, drop_axes)
        array = self._array(batch[0][0].store, translated.prefix, asyncio.get_running_loop())
        through_loop = isinstance(array.store, ZarrStore)  # its reads run on this loop: never block it
        if through_loop:
            array.store.coalesce = _coalesce_limits(batch[0][1])
        if not through_loop and target.nbytes <= INLINE_BYTES:  # the thread hop would cost more
            missing = _read_into(array, translated.query, target)
        else:
            missing = await asyncio.to_thread(_read_into, array, translated.query, target)
        return tuple({"status": "missing" if key in missing else "present"} for key in translated.keys)

    async def _fallback_read(self, reason: str, batch: list, out: Any, drop_axes: tuple[int, ...]) -> Any:
        if _strict():
            raise UnsupportedFeatureError(f"gpuzarr.CodecPipeline cannot read this batch ({reason}) and "
                                          f"codec_pipeline.strict is set")
        FALLBACKS[reason.split(" (")[0]] += 1
        log.debug("zarr-python's pipeline reads a batch of %d chunks: %s", len(batch), reason)
        return await self.fallback.read(batch, out, drop_axes)

    def _array(self, store: Any, prefix: str, loop: asyncio.AbstractEventLoop) -> Array:
        """One gpuzarr Array per store and array path, kept across reads with its reader (the
        store is kept beside it, so its id names no other store while cached); one per event
        loop too where it reads through zarr-python's store API (a ZarrStore), bound to that
        loop and kept while the loop lives (a loop per read, as asyncio.run makes, leaves
        nothing behind): one array shared by every loop, given the loop of each read, sent one
        loop's requests to another's, closed by then."""
        key = (id(store), prefix)
        found = self._arrays.get(key) or self._loop_arrays.get(loop, {}).get(key)
        if found is None:
            threads = config.get("threading.max_workers", None)
            settings = Settings(threads=threads if isinstance(threads, int) and threads > 0 else None)
            found = (store, Array(self._meta, gpuzarr_store(store, prefix), "cpu", settings))
            if isinstance(found[1].store, ZarrStore):
                found[1].store.loop = loop
                self._loop_arrays.setdefault(loop, {})[key] = found
            else:
                self._arrays[key] = found
        return found[1]


def _read_into(array: Array, query: Any, target: Any) -> set[str]:
    """Run on a worker thread: the read, straight into zarr-python's output where its layout
    allows (C order, the array's dtype), else into a new array then copied in (NumPy casts as
    zarr-python's own placement does: another byte order, an `out=` of another dtype). Shard
    indexes of zarr-python's stores are re-read each read (ZarrStore.keeps_indexes), local files'
    kept while their version holds (see Store.version)."""
    report = ReadReport()
    device = "cpu" if isinstance(target, np.ndarray) else "gpu"
    direct = target.flags.c_contiguous and target.dtype == array.dtype
    result = array._query(query, device, target if direct else None, report)
    if not direct:
        target[...] = result
    return set(report.missing_keys)


def _coalesce_limits(spec: Any) -> dict[str, int]:
    """zarr-python >= 3.4's per-array limits on merging a shard's ranges into one request."""
    limits = {"max_gap_bytes": "sharding_coalesce_max_gap_bytes", "max_coalesced_bytes": "sharding_coalesce_max_bytes"}
    found = {arg: getattr(spec.config, name, None) for arg, name in limits.items()}
    return {arg: value for arg, value in found.items() if value is not None}


def _gpuzarr_metadata(metadata: Any, store: Any) -> ArrayMetadata:
    docs = {name: json.loads(buf.to_bytes()) for name, buf in
            metadata.to_buffer_dict(default_buffer_prototype()).items()}
    where = f"{store} (an array's metadata)"
    if metadata.zarr_format == 3:
        doc = docs["zarr.json"]
        bits = _nan_fill(metadata.fill_value)
        return parse_v3(doc if bits is None else {**doc, "fill_value": bits}, where)
    return parse_v2_array(docs[".zarray"], docs.get(".zattrs", {}), where)


def _nan_fill(fill: Any) -> str | list | None:
    """A float or complex fill value holding a NaN in the spec's raw-bits form ("0x..." per
    float): zarr-python's JSON writes every NaN as "NaN", which would lose its payload."""
    value = np.asarray(fill)
    if value.dtype.kind not in "fc" or not np.isnan(value).any():
        return None
    value = value.astype(value.dtype.newbyteorder("<"))  # a byte swap: the bits kept
    floats = value.reshape(1).view(f"<f{value.dtype.itemsize // (2 if value.dtype.kind == 'c' else 1)}")
    hexes = ["0x" + x.tobytes()[::-1].hex() for x in floats]
    return hexes[0] if len(hexes) == 1 else hexes


def _codecs(metadata: Any) -> list:
    if metadata.zarr_format == 3:
        return list(metadata.codecs)
    return [V2Codec(filters=metadata.filters, compressor=metadata.compressor)]


def _strict() -> bool:
    return bool(config.get("codec_pipeline.strict", False))


def _rebuild(metadata: Any, store: Any) -> CodecPipeline:
    return CodecPipeline.from_array_metadata_and_store(metadata, store)
