"""`scale_offset` and `cast_value` (zarr-extensions): the array→array codecs zarr-python 3.4 writes.

They are decoded as zarr-python 3.4.2 decodes them, bit for bit and error for error: its own
arithmetic for `scale_offset`, and for `cast_value` the rules of cast-value-rs 0.5 (the Rust
package zarr-python casts with), including the float16 conversions it makes through float32 and
the NaN bits x86 hardware gives them. Everything is NumPy over the whole batch, a handful of
array operations per codec and never a Python step per element; there is no GPU decoder (as for
the numcodecs filters), and a GPU read of such a chain is refused with the usual hint.

Values zarr-python refuses to produce are refused here too: `CorruptDataError` when a chunk
decodes to one, `MetadataError` when the fill value cannot pass through the codecs at open
(zarr-python resolves it through every codec when it opens an array)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import is_ml_dtype, parse_data_type_v3
from ..errors import CorruptDataError, MetadataError, UnsupportedFeatureError

Shape = tuple[int, ...]

# the types cast-value-rs 0.5 converts: zarr-python 3.4.2 can cast (and so write) no others
NUMBER_TYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                          "float16", "float32", "float64"})
# what the zarr-extensions specs allow beyond those: valid metadata that neither reads
_SPEC_ONLY_TYPES = frozenset({"int2", "int4", "uint2", "uint4", "float4_e2m1fn", "float6_e2m3fn",
                              "float6_e3m2fn", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz",
                              "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
                              "bfloat16"})
ROUNDING_MODES = ("nearest-even", "towards-zero", "towards-positive", "towards-negative", "nearest-away")
OUT_OF_RANGE_MODES = (None, "clamp", "wrap")
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_HEX_FLOATS = {4: ">e", 8: ">f", 16: ">d"}
_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


class Unrepresentable(ValueError):
    """A value a codec cannot produce in its output type. A chunk decode reports it as a
    CorruptDataError, the fill value's resolution at open as a MetadataError."""


# --- metadata -------------------------------------------------------------------------------


def number_type(dtype: np.dtype, codec: str, where: str) -> str:
    """The v3 name of `dtype` when `codec` may compute in it. zarr-python refuses every other
    type of its own (MetadataError); ml_dtypes' numbers are valid for the spec but zarr-python
    3.4 has no such types, so nothing says how it would compute in them (refused as unsupported)."""
    if is_ml_dtype(dtype):
        raise UnsupportedFeatureError(f"{where}: {codec} on {dtype.name} is not supported (only "
                                      f"{', '.join(sorted(NUMBER_TYPES))})")
    if dtype.kind in "iuf" and dtype.name in NUMBER_TYPES:
        return dtype.name
    raise MetadataError(f"{where}: {codec} works on integer and floating-point data types, not {dtype}")


def json_scalar(value: Any, dtype: np.dtype) -> np.generic:
    """A JSON scalar as zarr-python's `from_json_scalar` reads it for a v3 number type: integers
    also from integral floats and decimal strings; floats also from "NaN"/"Infinity"/"-Infinity",
    "0x" hex bit patterns and decimal strings. Raises TypeError/ValueError/OverflowError where
    zarr-python does (a value out of the type's range included)."""
    if dtype.kind in "iu":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            value = int(value)
        elif not isinstance(value, int):
            raise TypeError(f"{value!r} is not an integer")
        return dtype.type(value)
    if isinstance(value, str):
        if value in _SPECIAL_FLOATS:
            number = _SPECIAL_FLOATS[value]
        elif value.startswith("0x"):
            if len(value) - 2 not in _HEX_FLOATS:
                raise ValueError(f"{value!r} is not 4, 8 or 16 hex digits")
            number = struct.unpack(_HEX_FLOATS[len(value) - 2], bytes.fromhex(value[2:]))[0]
        else:
            number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise TypeError(f"{value!r} is not a number")
    return dtype.type(number)


def _json_value(value: Any, dtype: np.dtype, what: str, where: str) -> np.generic:
    try:
        return json_scalar(value, dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MetadataError(f"{where}: {what} {value!r} is not representable in {dtype} ({exc})") from None


# --- scale_offset ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScaleOffset:
    """`scale_offset`: stored = (x - offset) * scale, read back as stored / scale + offset, in the
    arithmetic of the codec's own type. Integers: the division must be exact and the result in
    range (else an error), except int64, where zarr-python's arithmetic wraps and so this does."""

    offset: np.generic
    scale: np.generic
    config: dict
    name: str = "scale_offset"

    @classmethod
    def build(cls, config: dict, dtype: np.dtype, where: str) -> ScaleOffset:
        unknown = sorted(set(config) - {"offset", "scale"})
        if unknown:
            raise MetadataError(f"{where}: scale_offset has unknown configuration {unknown}")
        number_type(dtype, "scale_offset", where)
        parsed = {}
        for key, default in (("offset", 0), ("scale", 1)):
            value = config.get(key, default)
            if not isinstance(value, (int, float, str)):  # a JSON true passes, as 1, in zarr-python too
                raise MetadataError(f"{where}: scale_offset {key} {value!r} must be a number or a string")
            parsed[key] = _json_value(value, dtype, f"scale_offset {key}", where)
        if parsed["scale"] == 0:
            raise MetadataError(f"{where}: scale_offset scale must not be zero")
        return cls(parsed["offset"], parsed["scale"], dict(config))

    def resolve(self, shape: Shape, dtype: np.dtype) -> tuple[Shape, np.dtype]:
        return shape, dtype

    def encode_fill(self, fill: Any, dtype: np.dtype) -> np.generic:
        """The fill value as this codec stores it: zarr-python resolves it so, and fills the
        missing inner chunks of a shard below this codec with it."""
        x = np.asarray(fill, dtype=dtype)
        with np.errstate(all="ignore"):
            if dtype.kind == "f":
                return (x - self.offset) * self.scale
            if dtype == np.int64:  # int64 arithmetic, wrapping as zarr-python's does
                return (x - self.offset) * self.scale
        exact = (int(x) - int(self.offset)) * int(self.scale)
        _check_range(np.array([exact], dtype=object), dtype)
        return dtype.type(exact)

    def decode_batch(self, xp: Any, encoded: Any, shape: Shape, dtype: np.dtype) -> Any:
        if xp is not np:
            raise UnsupportedFeatureError(f"codec {self.name!r} has no GPU decoder; read with device='cpu'")
        try:
            return _unscale(np.asarray(encoded, dtype=dtype.newbyteorder("=")), self.offset, self.scale)
        except Unrepresentable as exc:
            raise CorruptDataError(f"scale_offset: {exc}") from None


def _check_range(values: np.ndarray, dtype: np.dtype) -> None:
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise Unrepresentable(f"a value is outside the range of dtype {dtype} [{info.min}, {info.max}]")


def _unscale(arr: np.ndarray, offset: np.generic, scale: np.generic) -> np.ndarray:
    """arr / scale + offset in arr's type, as zarr-python 3.4.2 computes it."""
    with np.errstate(all="ignore"):
        if arr.dtype.kind == "f":
            return (arr / scale) + offset
        if np.any(arr % scale):
            raise Unrepresentable(f"a stored value leaves a non-zero remainder when divided by scale {scale}, "
                                  f"so it has no {arr.dtype} value")
        if arr.dtype == np.int64:  # zarr-python's int64 arithmetic wraps rather than fail
            return arr // scale + offset
        if arr.dtype == np.uint64:  # no wider type: the quotient is non-negative, only the sum can overflow
            quotient = arr // scale
            if np.any(quotient > np.uint64(np.iinfo(np.uint64).max - int(offset))):
                raise Unrepresentable(f"a value is outside the range of dtype {arr.dtype}")
            return quotient + offset
        wide = arr.astype(np.int64) // np.int64(scale) + np.int64(offset)
        _check_range(wide, arr.dtype)
        return wide.astype(arr.dtype)


# --- cast_value -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CastValue:
    """`cast_value`: stored values are those of the array converted to `data_type`, read back by
    converting them to the array's type with the same `rounding` and `out_of_range` rules and
    the `scalar_map.decode` entries."""

    target: np.dtype  # the stored (encoded) type
    decode: _Cast
    encode: _Cast  # for the fill value only
    config: dict
    name: str = "cast_value"

    @classmethod
    def build(cls, config: dict, dtype: np.dtype, where: str) -> CastValue:
        unknown = sorted(set(config) - {"data_type", "rounding", "out_of_range", "scalar_map"})
        if unknown:
            raise MetadataError(f"{where}: cast_value has unknown configuration {unknown}")
        if "data_type" not in config:
            raise MetadataError(f"{where}: cast_value needs a 'data_type'")
        target_dt = parse_data_type_v3(config["data_type"], where)
        if target_dt.name in _SPEC_ONLY_TYPES or is_ml_dtype(target_dt.dtype):
            raise UnsupportedFeatureError(f"{where}: cast_value to {target_dt.name} is not supported (only "
                                          f"{', '.join(sorted(NUMBER_TYPES))})")
        if target_dt.name not in NUMBER_TYPES:
            raise MetadataError(f"{where}: cast_value casts to integer and floating-point types, not "
                                f"{target_dt.name!r}")
        number_type(dtype, "cast_value", where)
        target = target_dt.dtype
        rounding = config.get("rounding", "nearest-even")
        if rounding not in ROUNDING_MODES:
            raise MetadataError(f"{where}: cast_value rounding {rounding!r} is not one of {list(ROUNDING_MODES)}")
        out_of_range = config.get("out_of_range")
        if out_of_range not in OUT_OF_RANGE_MODES:
            raise MetadataError(f"{where}: cast_value out_of_range {out_of_range!r} is not 'clamp' or 'wrap'")
        if out_of_range == "wrap" and target.kind not in "iu":
            raise MetadataError(f"{where}: cast_value out_of_range 'wrap' needs an integer data_type, not "
                                f"{target_dt.name}")
        encode_map, decode_map = _scalar_maps(config.get("scalar_map"), dtype, target, where)
        return cls(target, _Cast(target, dtype, rounding, out_of_range, *decode_map),
                   _Cast(dtype, target, rounding, out_of_range, *encode_map), dict(config))

    def resolve(self, shape: Shape, dtype: np.dtype) -> tuple[Shape, np.dtype]:
        return shape, self.target

    def encode_fill(self, fill: Any, dtype: np.dtype) -> np.generic:
        """The fill value cast to the stored type with `scalar_map.encode`, as zarr-python
        resolves it (see ScaleOffset.encode_fill)."""
        return self.encode(np.asarray([fill], dtype=dtype))[0]

    def decode_batch(self, xp: Any, encoded: Any, shape: Shape, dtype: np.dtype) -> Any:
        if xp is not np:
            raise UnsupportedFeatureError(f"codec {self.name!r} has no GPU decoder; read with device='cpu'")
        try:
            return self.decode(np.asarray(encoded))
        except Unrepresentable as exc:
            raise CorruptDataError(f"cast_value: {exc}") from None


def _scalar_maps(spec: Any, source: np.dtype, target: np.dtype, where: str) -> tuple[tuple, tuple]:
    """(keys, values) arrays of `scalar_map`'s encode and decode entries, as zarr-python hands them
    to cast-value-rs: the entries collected into a Python dict (a repeated key keeps its first
    place and its last value), keys and values made Python ints or floats, then each taken as the
    Rust type (float16 through float32). Every entry must be a value of its side's type."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise MetadataError(f"{where}: cast_value scalar_map must be an object, not {spec!r}")
    maps = []
    for direction, key_type, value_type in (("encode", source, target), ("decode", target, source)):
        entries = spec.get(direction)
        if entries is None:
            entries = {}
        try:
            pairs = dict(entries) if not isinstance(entries, Mapping) else entries
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{where}: cast_value scalar_map {direction} {entries!r} is not a list of "
                                f"[input, output] pairs ({exc})") from None
        for key, value in pairs.items():
            _json_value(key, key_type, f"cast_value scalar_map {direction} key", where)
            _json_value(value, value_type, f"cast_value scalar_map {direction} value", where)
        try:
            pythonic = {_pythonic(k, key_type): _pythonic(v, value_type) for k, v in pairs.items()}
        except ValueError:
            raise UnsupportedFeatureError(f"{where}: cast_value scalar_map {direction} has a hex-encoded entry, "
                                          f"which zarr-python 3.4.2 cannot cast with either") from None
        keys = _rust_values(list(pythonic), key_type)
        values = _rust_values(list(pythonic.values()), value_type)
        maps.append((keys, values))
    return maps[0], maps[1]


def _pythonic(value: Any, dtype: np.dtype) -> int | float:
    return int(value) if dtype.kind in "iu" else float(value)


def _rust_values(values: list, dtype: np.dtype) -> np.ndarray:
    """Python numbers as cast-value-rs takes them: integers exactly, floats rounded to float32
    first (float16 is extracted through float32)."""
    if dtype.kind in "iu":
        return np.array(values, dtype=dtype)
    as64 = np.array(values, dtype=np.float64)
    return as64 if dtype == _F64 else _float_to_float_nearest(as64.astype(np.float32), dtype)


@dataclass(frozen=True, eq=False)
class _Cast:
    """One direction of cast_value: cast-value-rs 0.5's per-element rules, as array operations.
    Order per element: a scalar_map entry (the first that matches; a NaN key matches any NaN),
    else the conversion below; an element that has no value in the target type fails the whole
    call, as cast-value-rs does."""

    src: np.dtype
    dst: np.dtype
    rounding: str
    out_of_range: str | None
    keys: np.ndarray
    values: np.ndarray

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr, dtype=self.src.newbyteorder("="))
        with np.errstate(all="ignore"):
            unmapped, mapped = self._map(arr)
            if self.src.kind == "f":
                convert = _float_to_float if self.dst.kind == "f" else _float_to_int
            else:
                convert = _int_to_float if self.dst.kind == "f" else _int_to_int
            out = convert(self, arr, unmapped)
        return out if mapped is None else np.where(unmapped, out, mapped)

    def _map(self, arr: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not len(self.keys):
            return None, None
        hit = np.zeros(arr.shape, dtype=bool)
        mapped = np.zeros(arr.shape, dtype=self.dst)
        nans = np.isnan(arr) if self.src.kind == "f" else None
        for key, value in zip(self.keys, self.values):  # one array operation per entry
            match = nans if nans is not None and np.isnan(key) else arr == key
            match = match & ~hit
            mapped[match] = value
            hit |= match
        return ~hit, mapped

    def fail(self, bad: np.ndarray, arr: np.ndarray, unmapped: np.ndarray | None, why: str) -> None:
        """Raise for the elements in `bad` that no scalar_map entry took."""
        if unmapped is not None:
            bad = bad & unmapped
        if bad.any():
            value = arr[bad].flat[0]
            raise Unrepresentable(f"{self.src} value {value!r} {why} (casting to {self.dst}, rounding "
                                  f"{self.rounding}, out_of_range {self.out_of_range})")


def _int_to_int(cast: _Cast, arr: np.ndarray, unmapped: np.ndarray | None) -> np.ndarray:
    src, dst = np.iinfo(cast.src), np.iinfo(cast.dst)
    lo, hi = cast.src.type(max(src.min, dst.min)), cast.src.type(min(src.max, dst.max))
    if cast.out_of_range == "clamp":
        return np.clip(arr, lo, hi).astype(cast.dst)
    if cast.out_of_range is None:
        cast.fail((arr < lo) | (arr > hi), arr, unmapped, f"is outside the range of {cast.dst}")
    return arr.astype(cast.dst)  # "wrap": two's complement truncation, as Rust's `as`


def _float_to_int(cast: _Cast, arr: np.ndarray, unmapped: np.ndarray | None) -> np.ndarray:
    finite = np.isfinite(arr)
    cast.fail(~finite, arr, unmapped, "has no integer value")
    rounded = _round(arr, cast.rounding).astype(np.float64)  # exact: every float is an f64
    info = np.iinfo(cast.dst)
    lo, hi_exclusive = float(info.min), float(info.max) + 1.0  # both exact powers of two (or 0)
    inside = (rounded >= lo) & (rounded < hi_exclusive)
    out = np.where(inside, rounded, 0.0).astype(cast.dst)
    if inside.all():
        return out
    if cast.out_of_range == "clamp":
        bound = np.where(rounded < lo, np.array(info.min, cast.dst), np.array(info.max, cast.dst))
        return np.where(inside, out, bound)
    if cast.out_of_range == "wrap":
        return np.where(inside, out, _wrap(np.where(finite, rounded, 0.0), cast.dst))
    cast.fail(~inside & finite, arr, unmapped, f"is outside the range of {cast.dst}")
    return out


def _round(arr: np.ndarray, mode: str) -> np.ndarray:
    """Round to an integer in arr's own type (float16 in float32, as cast-value-rs does)."""
    if arr.dtype == _F16:
        return _round(arr.astype(np.float32), mode).astype(np.float16)
    if mode == "nearest-even":
        return np.rint(arr)
    if mode == "towards-zero":
        return np.trunc(arr)
    if mode == "towards-positive":
        return np.ceil(arr)
    if mode == "towards-negative":
        return np.floor(arr)
    whole = np.trunc(arr)  # nearest-away (Rust's round): the fraction x - trunc(x) is exact
    return whole + np.where(np.abs(arr - whole) >= 0.5, np.sign(arr), 0).astype(arr.dtype)


def _wrap(values: np.ndarray, dst: np.dtype) -> np.ndarray:
    """Integral f64 values reduced modulo 2**N into `dst`. Below 2**63 in magnitude int64 holds
    them exactly; beyond, they are multiples of 2**11, so the f64 remainder is exact too."""
    two63, two64 = 2.0**63, 2.0**64
    small = (values >= -two63) & (values < two63)
    near = np.where(small, values, 0.0).astype(np.int64).view(np.uint64)
    far = np.fmod(np.where(small, 0.0, values), two64)
    far = np.where(far < 0, far + two64, far).astype(np.uint64)
    return np.where(small, near, far).astype(dst)


def _float_to_float_nearest(arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    """Rust's nearest-even conversion between float types, NaN bits included: float16 goes to and
    from float32 (half's hardware path on x86, which also converts float64 through float32), and
    that hardware quiets a signalling NaN where NumPy's software float16 conversion keeps it."""
    if arr.dtype == dst:
        return arr.copy()
    if dst == _F16:
        as32 = arr.astype(np.float32)
        out = as32.astype(np.float16)
        nan = np.isnan(as32)
        if nan.any():
            bits = as32.view(np.uint32)
            quiet = ((bits >> 16) & 0x8000) | 0x7E00 | ((bits & 0x7FFFFF) >> 13)
            out.view(np.uint16)[nan] = quiet[nan].astype(np.uint16)
        return out
    if arr.dtype == _F16:
        out = arr.astype(np.float32)
        nan = np.isnan(out)
        if nan.any():
            out.view(np.uint32)[nan] |= np.uint32(0x400000)
        return out if dst == _F32 else out.astype(dst)
    return arr.astype(dst)


def _float_to_float(cast: _Cast, arr: np.ndarray, unmapped: np.ndarray | None) -> np.ndarray:
    dst = cast.dst
    nearest = _float_to_float_nearest(arr, dst)
    if arr.dtype == dst:
        return nearest
    value = arr.astype(np.float64)
    near64 = nearest.astype(np.float64)
    if cast.rounding == "nearest-even":
        result, overflow = nearest, np.isinf(nearest) & np.isfinite(arr)
    else:
        inexact = value != near64  # NaN included: every test below is false for it
        up, down = np.nextafter(nearest, dst.type(np.inf)), np.nextafter(nearest, dst.type(-np.inf))
        if cast.rounding == "towards-zero":
            step = inexact & (np.abs(near64) > np.abs(value))
            result = np.where(step, np.where(value >= 0, down, up), nearest)
        elif cast.rounding == "towards-positive":
            result = np.where(inexact & (near64 < value), up, nearest)
        elif cast.rounding == "towards-negative":
            result = np.where(inexact & (near64 > value), down, nearest)
        else:  # nearest-away: nearest-even already, except on a tie it broke towards zero
            other = np.where(value > near64, up, down)
            tie = inexact & ((near64 + other.astype(np.float64)) / 2.0 == value) & (np.abs(other) > np.abs(nearest))
            result = np.where(tie, other, nearest)
        # beyond the finite range once |value| reaches MAX + ulp(MAX), where towards-zero still
        # steps back from the infinity nearest-even gave
        info = np.finfo(dst)
        limit = float(info.max) + (float(info.max) - float(np.nextafter(info.max, dst.type(0))))
        overflow = inexact & (np.isinf(result) | (np.isinf(nearest) & (np.abs(value) >= limit)))
    return _overflowed(cast, result, overflow, value < 0, arr, unmapped)


def _int_to_float(cast: _Cast, arr: np.ndarray, unmapped: np.ndarray | None) -> np.ndarray:
    dst = cast.dst
    nearest = arr.astype(np.float32).astype(np.float16) if dst == _F16 else arr.astype(dst)
    result = nearest
    if cast.rounding != "nearest-even":
        value = arr.astype(np.float64)
        # `as` rounds to nearest-even, which is right in every mode when exact; f64 proves that
        # only below 2**53 for 64-bit sources
        exact = value == nearest.astype(np.float64)
        if arr.dtype.itemsize == 8:
            exact &= np.abs(value) < 2.0**53
        rounded = _round_integer(arr, np.finfo(dst).nmant + 1, cast.rounding)
        too_big = np.abs(rounded) > float(np.finfo(dst).max)
        directed = np.where(too_big, np.inf, rounded).astype(dst)  # exact: rounded to dst's precision
        result = np.where(exact, nearest, directed)
    if dst != _F16:  # only float16's finite range ends below 2**64
        return result
    return _overflowed(cast, result, np.isinf(result), arr < 0, arr, unmapped)


def _overflowed(cast: _Cast, result: np.ndarray, overflow: np.ndarray, negative: np.ndarray, arr: np.ndarray,
                unmapped: np.ndarray | None) -> np.ndarray:
    """Values beyond the target float's finite range: an infinity of their sign under `clamp`,
    else the cast fails naming them."""
    if not overflow.any():
        return result
    if cast.out_of_range == "clamp":
        return np.where(overflow, np.where(negative, -np.inf, np.inf).astype(cast.dst), result)
    cast.fail(overflow, arr, unmapped, f"is outside the finite range of {cast.dst}")
    return result


def _round_integer(arr: np.ndarray, digits: int, mode: str) -> np.ndarray:
    """Integers rounded to `digits` significant bits on their own bits (one rounding, even for
    64-bit values f64 cannot hold), as exact f64 values."""
    if arr.dtype.kind == "u":
        magnitude, negative = arr.astype(np.uint64), np.zeros(arr.shape, dtype=bool)
    else:
        signed = arr.astype(np.int64)
        negative = signed < 0
        magnitude = signed.view(np.uint64)
        magnitude = np.where(negative, ~magnitude + np.uint64(1), magnitude)  # |INT64_MIN| = 2**63 fits
    shift = np.maximum(_bit_length(magnitude) - digits, 0).astype(np.uint64)
    unit = np.uint64(1) << shift
    remainder = magnitude & (unit - np.uint64(1))
    half = unit >> np.uint64(1)
    if mode == "towards-zero":
        up = np.zeros(arr.shape, dtype=bool)
    elif mode == "towards-positive":
        up = ~negative & (remainder != 0)
    elif mode == "towards-negative":
        up = negative & (remainder != 0)
    elif mode == "nearest-away":
        up = remainder >= half
    else:
        up = (remainder > half) | ((remainder == half) & (((magnitude >> shift) & np.uint64(1)) == 1))
    up &= shift > 0
    rounded = (magnitude - remainder).astype(np.float64) + np.where(up, unit.astype(np.float64), 0.0)
    return np.where(negative, -rounded, rounded)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bit length of uint64 values, by binary search over the shift (six array steps)."""
    length = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (np.uint64(1) << np.uint64(step))
        length += np.where(big, step, 0)
        rest = np.where(big, rest >> np.uint64(step), rest)
    return length + (rest > 0)
