"""A codec chain, parsed from metadata and bound to one chunk shape and dtype: three explicit
fields (array→array, array→bytes, bytes→bytes) checked when built, plus the (shape, dtype) at
every stage so decoding never re-derives them per chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import DataType, _name_and_config, parse_data_type_v3
from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError
from .. import forksafe
from . import bytes_to_bytes
from .array_to_array import NumcodecsArray, Transpose
from .array_to_bytes import Bytes, Vlen, held_order
from .sharding import Sharding, check_index_codecs, check_shard_shape
from .value_codecs import CastValue, ScaleOffset, Unrepresentable

Shape = tuple[int, ...]
_NUMCODECS_ARRAY = {"delta", "fixedscaleoffset", "quantize", "bitround", "astype", "packbits"}
_VALUE_CODECS = {"scale_offset": ScaleOffset, "cast_value": CastValue}  # zarr-extensions, zarr-python 3.4


@dataclass(frozen=True)
class CodecChain:
    array_to_array: tuple
    array_to_bytes: Any  # Bytes | Vlen | Sharding
    bytes_to_bytes: tuple
    shape: Shape  # decoded chunk shape
    dtype: np.dtype  # decoded dtype
    stages: tuple  # (shape, dtype) entering each array→array codec's decode output…; last = at array→bytes

    @property
    def encoded_shape(self) -> Shape:
        return self.stages[-1][0]

    @property
    def encoded_dtype(self) -> np.dtype:
        return self.stages[-1][1]

    @forksafe.memo
    def raw_nbytes(self) -> int | None:
        """Size the bytes→bytes stage must produce, when the array→bytes codec fixes it (asked
        several times per read)."""
        ab = self.array_to_bytes
        return ab.raw_nbytes(self.encoded_shape, self.encoded_dtype) if isinstance(ab, Bytes) else None

    @property
    def trailing_crc32c(self) -> int:
        """How many crc32c codecs end the chain: they are verified on the host, on the stored
        bytes, before the rest of the chain decodes (in one batched call where possible)."""
        codecs, n = self.bytes_to_bytes, 0
        while n < len(codecs) and isinstance(codecs[len(codecs) - 1 - n], bytes_to_bytes.Crc32c):
            n += 1
        return n

    @property
    def sharding(self) -> Sharding | None:
        """The sharding codec when it is the whole chain, so inner chunks can be read directly."""
        ab = self.array_to_bytes
        if isinstance(ab, Sharding) and not self.array_to_array and not self.bytes_to_bytes:
            return ab
        return None

    def describe(self) -> list[str]:
        parts = [_describe(c) for c in self.array_to_array] + [_describe(self.array_to_bytes)]
        return parts + [_describe(c) for c in self.bytes_to_bytes]

    def decode_arrays(self, xp: Any, encoded: Any) -> Any:
        """Run the array→array codecs backwards over a batch shaped (N, *encoded_shape)."""
        for codec, (shape, dtype) in zip(reversed(self.array_to_array), reversed(self.stages[:-1])):
            encoded = codec.decode_batch(xp, encoded, shape, dtype)
        return encoded

    def encode_fill(self, fill: Any) -> Any:
        """The fill value as the array→bytes codec sees it, each array→array codec having encoded
        it in turn (zarr-python's resolved fill value): a shard below value-changing codecs fills
        its missing inner chunks with this, so they decode to decode(encode(fill)) as in
        zarr-python, not to the fill value itself. Raises Unrepresentable."""
        for codec, (_, dtype) in zip(self.array_to_array, self.stages[:-1]):
            fill = codec.encode_fill(fill, dtype)
        return fill


def _describe(codec: Any) -> str:
    if isinstance(codec, Sharding):
        inner = ", ".join(codec.inner.describe())
        return f"sharding_indexed(chunks={list(codec.chunk_shape)}, index={codec.index_location}, [{inner}])"
    if isinstance(codec, Transpose):
        return f"transpose{list(codec.order)}"
    if isinstance(codec, Bytes):
        return f"bytes({codec.endian})" if codec.endian else "bytes"
    if isinstance(codec, Vlen):
        return f"vlen-{codec.kind}"
    config = {k: v for k, v in getattr(codec, "config", {}).items() if k != "id"}
    return f"{codec.name}({', '.join(f'{k}={v}' for k, v in config.items())})" if config else codec.name


def _bind(aa: list, ab: Any, bb: list, shape: Shape, dtype: np.dtype) -> CodecChain:
    stages = [(tuple(shape), dtype)]
    for codec in aa:
        stages.append(codec.resolve(*stages[-1]))
    # stages[i] is the decoded spec of aa[i]; stages[-1] the spec the array→bytes codec sees
    return CodecChain(tuple(aa), ab, tuple(bb), tuple(shape), dtype, tuple(stages))


def build_chain_v3(codecs: Any, shape: Shape, dt: DataType, where: str) -> CodecChain:
    """Parse a v3 `codecs` list for chunks of `shape`; order and kinds are checked here."""
    if not isinstance(codecs, list) or not codecs:
        raise MetadataError(f"{where}: 'codecs' must be a non-empty list")
    aa: list = []
    ab: Any = None
    bb: list = []
    shape = tuple(shape)
    stage_shape, stage_dtype = shape, dt.dtype
    for spec in codecs:
        name, config = _name_and_config(spec, where)
        short = name.removeprefix("numcodecs.")
        if name == "transpose" or name in _VALUE_CODECS or (short in _NUMCODECS_ARRAY and name != short):
            if ab is not None:
                raise MetadataError(f"{where}: array→array codec {name!r} after the array→bytes codec")
            if name == "transpose":
                codec = Transpose.build(config, len(stage_shape), where)
            elif name in _VALUE_CODECS:
                codec = _VALUE_CODECS[name].build(config, stage_dtype, where)
            else:
                codec = NumcodecsArray.build(short, config, stage_dtype, where)
            aa.append(codec)
            stage_shape, stage_dtype = codec.resolve(stage_shape, stage_dtype)
            continue
        if name in ("bytes", "vlen-utf8", "vlen-bytes", "sharding_indexed"):
            if ab is not None:
                raise MetadataError(f"{where}: more than one array→bytes codec ({name!r})")
            ab = _build_array_to_bytes(name, config, stage_shape, stage_dtype, dt, where)
            continue
        codec = bytes_to_bytes.build_v3(name, config, where)
        if codec is None and name != short:
            codec = bytes_to_bytes.build_numcodecs(short, {"id": short, **config}, where)
        if codec is None:
            raise UnsupportedFeatureError(f"{where}: unknown codec {name!r}")
        if ab is None:
            raise MetadataError(f"{where}: bytes→bytes codec {name!r} before the array→bytes codec")
        bb.append(codec)
    if ab is None:
        raise MetadataError(f"{where}: the codec chain has no array→bytes codec")
    return _bind(aa, ab, bb, shape, dt.dtype)


def _build_array_to_bytes(name: str, config: dict, shape: Shape, dtype: np.dtype, dt: DataType, where: str) -> Any:
    if name == "bytes":
        if not dt.fixed_size:
            raise MetadataError(f"{where}: the bytes codec cannot encode variable-length {dt.name!r}")
        return Bytes.build(config, dtype, where)
    if name in ("vlen-utf8", "vlen-bytes"):
        if dt.fixed_size:
            raise MetadataError(f"{where}: {name} needs a variable-length data type, not {dt.name!r}")
        return Vlen("utf8" if name == "vlen-utf8" else "bytes")
    inner_shape = config.get("chunk_shape")
    if not isinstance(inner_shape, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in inner_shape):
        raise MetadataError(f"{where}: sharding_indexed needs an integer 'chunk_shape' list")
    check_shard_shape(shape, tuple(inner_shape), where)
    location = config.get("index_location", "end")
    if location not in ("start", "end"):
        raise MetadataError(f"{where}: sharding index_location {location!r} must be 'start' or 'end'")
    inner_dt = DataType(dt.name, dtype, dt.vlen)
    inner = build_chain_v3(config.get("codecs"), tuple(inner_shape), inner_dt, where)
    cps = [s // c for s, c in zip(shape, inner_shape)]
    index_chain = build_chain_v3(config.get("index_codecs", [{"name": "bytes", "configuration": {"endian": "little"}},
                                                            {"name": "crc32c"}]),
                                 (*cps, 2), parse_data_type_v3("uint64", where), where)
    check_index_codecs(index_chain, where)
    return Sharding(tuple(inner_shape), inner, location, index_chain)


def check_fill(chain: CodecChain, fill: Any, where: str) -> None:
    """Refuse at open a fill value the array→array codecs cannot encode, as zarr-python 3.4 does
    (it resolves the fill value through every codec when it opens an array; a scale_offset or
    cast_value that cannot represent it fails there). A shard's inner codecs are checked as
    zarr-python checks them, with the shard type's zero, and with the fill value the shard gets
    (zarr-python resolves that one before it decodes any present shard)."""
    try:
        encoded = chain.encode_fill(fill)
    except Unrepresentable as exc:
        raise MetadataError(f"{where}: the fill value {fill!r} does not pass through the codecs ({exc})") from None
    ab = chain.array_to_bytes
    if isinstance(ab, Sharding):
        check_fill(ab.inner, np.zeros((), chain.encoded_dtype)[()], where)
        check_fill(ab.inner, encoded, where)


def build_chain_v2(compressor: Any, filters: Any, shape: Shape, dt: DataType, order: str, where: str) -> CodecChain:
    """A v2 array as a chain: [transpose if order F] + bytes/vlen + filters reversed + compressor."""
    filters = list(filters or [])
    for f in filters + ([compressor] if compressor else []):
        if not isinstance(f, dict) or not isinstance(f.get("id"), str):
            raise MetadataError(f"{where}: compressor/filter {f!r} must be an object with an 'id'")
    ndim = len(shape)
    aa = [Transpose(tuple(range(ndim))[::-1])] if order == "F" and ndim > 1 else []
    stage_shape = Transpose(tuple(range(ndim))[::-1]).resolve(shape, dt.dtype)[0] if aa else tuple(shape)
    if dt.vlen is not None:
        if not filters or filters[0]["id"] not in ("vlen-utf8", "vlen-bytes"):
            raise UnsupportedFeatureError(f"{where}: object dtype needs a vlen-utf8 or vlen-bytes filter, "
                                          f"got {[f['id'] for f in filters]}")
        ab: Any = Vlen("utf8" if filters[0]["id"] == "vlen-utf8" else "bytes")
        filters = filters[1:]
    else:
        ab = Bytes(held_order(dt.dtype))  # v2 stores the dtype as declared
    bb = [bytes_to_bytes.build_numcodecs(f["id"], f, where) for f in filters]
    if compressor:
        bb.append(bytes_to_bytes.build_numcodecs(compressor["id"], compressor, where))
    # v2 filters run on raw buffers in numcodecs' own layout, so they sit among the bytes→bytes codecs
    chain = _bind(aa, ab, bb, shape, dt.dtype)
    assert chain.encoded_shape == stage_shape
    return chain


def decode_chunk(chain: CodecChain, data: Any, fill: Any, key: str) -> np.ndarray:
    """Decode one chunk on the host through any chain (nested sharding included)."""
    ab, shape, dtype = chain.array_to_bytes, chain.encoded_shape, chain.encoded_dtype
    try:
        data = bytes_to_bytes.decode_through(chain.bytes_to_bytes, data, chain.raw_nbytes)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{key}: {exc}") from None
    if isinstance(ab, Bytes):
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != ab.raw_nbytes(shape, dtype):
            raise CorruptDataError(f"{key}: chunk decodes to {raw.size} bytes, expected "
                                   f"{ab.raw_nbytes(shape, dtype)}")
        encoded = ab.decode_batch(np, raw.reshape(1, -1), shape, dtype)
    elif isinstance(ab, Vlen):
        try:
            encoded = ab.decode_one(data, shape, dtype)[None]
        except CorruptDataError as exc:
            raise CorruptDataError(f"{key}: {exc}") from None
    else:
        encoded = ab.decode_shard(data, shape, dtype, chain.encode_fill(fill), key)[None]
    try:
        return chain.decode_arrays(np, encoded)[0, ...]  # stays an array for 0-d chunks
    except CorruptDataError as exc:
        raise CorruptDataError(f"{key}: {exc}") from None
