"""Zarr data types (v3 names, v2 dtype strings) and their fill-value encodings, mapped to NumPy."""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MetadataError, UnsupportedFeatureError

_V3_NUMERIC = {
    "bool": "bool",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "float16": "f2", "float32": "f4", "float64": "f8",
    "complex64": "c8", "complex128": "c16",
}
# ml_dtypes' numbers, by the names tensorstore 0.1.86 writes in a v3 `data_type` and, unprefixed, in
# a v2 `dtype`. Left out: float8_e8m0fnu (tensorstore writes its numeric fill values wrongly, e.g.
# 1.0 as 1.8e19) and the types tensorstore does not write (uint2, uint4, float8_e4m3, ...).
_ML_FLOATS = frozenset({"bfloat16", "float8_e3m4", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
                        "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn"})
_ML_INTS = {"int2": (-2, 1), "int4": (-8, 7)}  # one byte per item, like tensorstore and zarrs
_ML_NAMES = _ML_FLOATS | _ML_INTS.keys()
_V2_BASE64_FILLS = frozenset({"float4_e2m1fn"})  # tensorstore's zarr driver writes this fill as base64
_TIME_UNITS = {"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "μs", "ns", "ps", "fs", "as", "generic"}
# what np.dtype raises on a spec it cannot use (it parses "(2,3)i4,f8" strings with ast.literal_eval)
NUMPY_DTYPE_ERRORS = (TypeError, ValueError, OverflowError, SyntaxError, RecursionError)


@dataclass(frozen=True)
class DataType:
    """A parsed data type: `dtype` is what reads return; `vlen` marks variable-length items."""

    name: str
    dtype: np.dtype
    vlen: str | None = None  # "utf8" or "bytes": object-like items encoded by a vlen codec

    @property
    def fixed_size(self) -> bool:
        return self.vlen is None


def _name_and_config(spec: Any, where: str) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        config = spec.get("configuration", {})
        if not isinstance(config, dict):
            raise MetadataError(f"{where}: 'configuration' of {spec['name']!r} must be an object")
        return spec["name"], config
    raise MetadataError(f"{where}: expected a name or a {{'name', 'configuration'}} object, got {spec!r}")


def _numpy_dtype(spec: str, name: str, where: str) -> np.dtype:
    """np.dtype(spec) for a v3 type whose sizes come from the metadata: NumPy refuses items of
    2 GiB and more, and datetime scales beyond a C int."""
    try:
        return np.dtype(spec)
    except NUMPY_DTYPE_ERRORS as exc:
        raise UnsupportedFeatureError(f"{where}: data type {name!r} has no NumPy equivalent ({exc})") from None


MAX_ITEM_BYTES = 1 << 26  # one array element (fixed-length bytes, strings, structs): 64 MiB


def _length_bytes(config: dict, name: str, where: str) -> int:
    n = config.get("length_bytes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise MetadataError(f"{where}: data type {name!r} needs a non-negative integer 'length_bytes'")
    return n


def _ml_dtype(name: str, where: str) -> np.dtype:
    """ml_dtypes is optional: it is imported only once metadata names one of its types."""
    try:
        import ml_dtypes
    except ImportError:
        raise UnsupportedFeatureError(f"{where}: data type {name!r} needs the ml_dtypes package: "
                                      f'pip install "gpuzarr[ml]"') from None
    if not hasattr(ml_dtypes, name):
        raise UnsupportedFeatureError(f"{where}: data type {name!r} needs a newer ml_dtypes than "
                                      f"{ml_dtypes.__version__}: pip install -U ml_dtypes")
    return np.dtype(getattr(ml_dtypes, name))


def is_ml_dtype(dtype: np.dtype) -> bool:
    """Whether `dtype` is one of ml_dtypes' numbers: NumPy files them under kind 'V' (float8_e5m2
    under 'f'), so byte-order, fill-value and GPU checks must not go by the kind alone."""
    return dtype.type.__module__ == "ml_dtypes"


def _time_dtype(kind: str, config: dict, where: str) -> np.dtype:
    unit, scale = config.get("unit"), config.get("scale_factor", 1)
    if (not isinstance(unit, str) or unit not in _TIME_UNITS or isinstance(scale, bool) or not isinstance(scale, int)
            or scale < 1):
        raise MetadataError(f"{where}: bad unit/scale_factor for {kind}: {config!r}")
    unit = "us" if unit == "μs" else unit
    code = "M8" if kind == "numpy.datetime64" else "m8"
    spec = f"<{code}" if unit == "generic" else f"<{code}[{scale if scale != 1 else ''}{unit}]"
    return _numpy_dtype(spec, kind, where)


def _string_dtype() -> np.dtype:
    try:
        return np.dtypes.StringDType()  # what zarr-python 3 returns with NumPy 2
    except AttributeError:  # NumPy 1.x
        return np.dtype(object)


def parse_data_type_v3(spec: Any, where: str) -> DataType:
    """Map a v3 `data_type` value to a DataType; unknown names are refused at open time."""
    return _holdable(_parse_data_type_v3(spec, where), where)


def _holdable(dt: DataType, where: str) -> DataType:
    """Refuse a type NumPy arrays do not hold as it is: items of 0 bytes, and types NumPy changes
    when it makes an array ("S0" becomes "S1", big-endian datetimes without a unit native ones),
    which would read as other data."""
    if not dt.fixed_size:
        return dt
    held = np.empty(0, dt.dtype).dtype
    if dt.dtype.itemsize == 0 or held != dt.dtype:
        raise UnsupportedFeatureError(f"{where}: NumPy arrays cannot hold data type {dt.name!r} "
                                      f"({'0-byte items' if dt.dtype.itemsize == 0 else f'they make it {held}'})")
    return dt


def _parse_data_type_v3(spec: Any, where: str) -> DataType:
    name, config = _name_and_config(spec, where)
    if name in _V3_NUMERIC:
        return DataType(name, np.dtype(_V3_NUMERIC[name]))
    if name in _ML_NAMES:
        return DataType(name, _ml_dtype(name, where))
    if name.startswith("r") and name[1:].isdigit():
        bits = int(name[1:])
        if bits == 0 or bits % 8:
            raise MetadataError(f"{where}: raw data type {name!r} must have a positive multiple of 8 bits")
        return DataType(name, _numpy_dtype(f"V{bits // 8}", name, where))
    if name == "raw_bytes":
        return DataType(name, _numpy_dtype(f"V{_length_bytes(config, name, where)}", name, where))
    if name == "null_terminated_bytes":
        return DataType(name, _numpy_dtype(f"S{_length_bytes(config, name, where)}", name, where))
    if name == "fixed_length_utf32":
        n = _length_bytes(config, name, where)
        if n % 4:
            raise MetadataError(f"{where}: fixed_length_utf32 length_bytes must be a multiple of 4")
        return DataType(name, _numpy_dtype(f"<U{n // 4}", name, where))
    if name in ("numpy.datetime64", "numpy.timedelta64"):
        return DataType(name, _time_dtype(name, config, where))
    if name in ("string", "variable_length_utf8"):
        return DataType(name, _string_dtype(), vlen="utf8")
    if name in ("bytes", "variable_length_bytes"):
        return DataType(name, np.dtype(object), vlen="bytes")
    if name in ("structured", "struct"):
        # zarr-python 3.1 writes "structured" with [name, type] pairs; later versions "struct"
        # (zarr-extensions) with {"name", "data_type"} objects
        fields = config.get("fields")
        if not isinstance(fields, list) or not fields:
            raise MetadataError(f"{where}: {name} data type needs a non-empty 'fields' list")
        parts = []
        for field in fields:
            if isinstance(field, dict) and set(field) == {"name", "data_type"}:
                field = [field["name"], field["data_type"]]
            if not (isinstance(field, list) and len(field) == 2 and isinstance(field[0], str)):
                raise MetadataError(f"{where}: bad {name} field {field!r}")
            sub = parse_data_type_v3(field[1], where)
            if not sub.fixed_size:
                raise UnsupportedFeatureError(f"{where}: variable-length field {field[0]!r} in a struct")
            parts.append((field[0], sub.dtype))
        try:
            return DataType(name, np.dtype(parts))
        except (TypeError, ValueError) as exc:  # e.g. the same field name twice
            raise MetadataError(f"{where}: bad {name} fields ({exc})") from None
    raise UnsupportedFeatureError(f"{where}: unknown data type {name!r}")


def parse_dtype_v2(spec: Any, where: str) -> DataType:
    """Map a v2 `dtype` (a NumPy type string or a structured list) to a DataType."""
    return _holdable(_parse_dtype_v2(spec, where), where)


def _parse_dtype_v2(spec: Any, where: str) -> DataType:
    if isinstance(spec, str) and spec in _ML_NAMES:  # before NumPy, which knows them once ml_dtypes is imported
        return DataType(spec, _ml_dtype(spec, where))
    try:
        if isinstance(spec, list):
            dtype = np.dtype([_v2_field(f, where) for f in spec])
        elif isinstance(spec, str):
            dtype = np.dtype(spec)
        else:
            raise TypeError(f"{spec!r}")
    except NUMPY_DTYPE_ERRORS as exc:
        raise MetadataError(f"{where}: bad v2 dtype {spec!r} ({exc})") from None
    if dtype.kind == "O":
        # strings as zarr-python 3 reads them (vlen-utf8); refined by the object codec in filters
        return DataType(str(spec), _string_dtype(), vlen="utf8")
    if dtype.hasobject:
        raise UnsupportedFeatureError(f"{where}: v2 dtype {spec!r} holds Python objects inside a structure")
    return DataType(str(spec), dtype)


def _v2_field(field: Any, where: str) -> tuple:
    """One [name, type, (shape)] of a v2 structured dtype; tensorstore writes ml_dtypes' names as
    field types too."""
    if isinstance(field, list) and len(field) > 1 and isinstance(field[1], str) and field[1] in _ML_NAMES:
        return (field[0], _ml_dtype(field[1], where), *field[2:])
    return tuple(field)


# ----------------------------------------------------------------------------- fill values

def _float_from_json(value: Any, dtype: np.dtype, where: str) -> Any:
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in special:
            return special[value]
        if value.startswith("0x"):
            size = dtype.itemsize
            try:
                raw = int(value, 16).to_bytes(size, "big")
            except (ValueError, OverflowError):
                raise MetadataError(f"{where}: fill value {value!r} is not {size} bytes of hex") from None
            return np.frombuffer(raw, dtype=dtype.newbyteorder(">"))[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise MetadataError(f"{where}: fill value {value!r} is not valid for {dtype}")


def _bytes_from_json(value: Any, where: str) -> bytes:
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.standard_b64decode(value)
        except ValueError:
            pass
    raise MetadataError(f"{where}: fill value {value!r} is neither base64 nor a list of bytes")


def parse_fill_value(value: Any, dt: DataType, where: str, zarr_format: int) -> Any:
    """Decode a JSON fill value into a NumPy scalar of `dt.dtype` (a str/bytes for vlen types).
    Items past MAX_ITEM_BYTES are refused here, at open: the scalar alone would be allocated
    whole (a `length_bytes` of 2**31 - 1: 2 GiB from a few bytes of metadata)."""
    dtype = dt.dtype
    if dtype.itemsize > MAX_ITEM_BYTES:
        raise UnsupportedFeatureError(f"{where}: data type {dtype} has items of {dtype.itemsize} bytes; gpuzarr "
                                      f"reads items of at most {MAX_ITEM_BYTES}")
    if value is None:
        if zarr_format == 3:
            raise MetadataError(f"{where}: fill_value is required in Zarr v3")
        return _default_fill(dt)
    try:
        if dt.vlen == "utf8":  # a number as its text, as zarr-python reads it (zarr-python 2 wrote 0)
            if not isinstance(value, (str, int, float)):
                raise MetadataError(f"{where}: fill value {value!r} must be a string")
            return str(value)
        if dt.vlen == "bytes":
            return _bytes_from_json(value, where) if zarr_format == 3 else base64.standard_b64decode(value)
        if is_ml_dtype(dtype):
            return _ml_fill(value, dtype, where, zarr_format)
        kind = dtype.kind
        if kind == "b":
            if not isinstance(value, bool) and value not in (0, 1):
                raise MetadataError(f"{where}: fill value {value!r} must be true or false")
            return np.bool_(value)
        if kind in "iu":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise MetadataError(f"{where}: fill value {value!r} must be an integer for {dtype}")
            info = np.iinfo(dtype)
            if not info.min <= int(value) <= info.max:
                raise MetadataError(f"{where}: fill value {value} is out of range for {dtype}")
            return dtype.type(int(value))
        if kind == "f":
            return np.array(_float_from_json(value, dtype, where), dtype=dtype)[()]
        if kind == "c":
            if not (isinstance(value, list) and len(value) == 2):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return dtype.type(value)
                raise MetadataError(f"{where}: complex fill value {value!r} must be [real, imag]")
            part = np.dtype(f"f{dtype.itemsize // 2}")
            re, im = (np.array(_float_from_json(v, part, where), dtype=part)[()] for v in value)
            out = np.zeros((), dtype=dtype)
            out.real, out.imag = re, im
            return out[()]
        if kind in "mM":
            if isinstance(value, str) and value == "NaT":
                return np.array("NaT", dtype=dtype)[()]
            if isinstance(value, bool) or not isinstance(value, int):
                raise MetadataError(f"{where}: fill value {value!r} must be an integer for {dtype}")
            return np.array(value, dtype=np.int64).view(dtype.newbyteorder("=")).astype(dtype)[()]
        if kind == "U":
            if not isinstance(value, str):
                raise MetadataError(f"{where}: fill value {value!r} must be a string")
            return np.array(value, dtype=dtype)[()]
        if dtype.fields is not None and isinstance(value, dict):  # "struct": a value per field
            if set(value) != set(dtype.names):
                raise MetadataError(f"{where}: fill value fields {sorted(value)} are not {list(dtype.names)}")
            out = np.zeros((), dtype=dtype)
            for field in dtype.names:
                sub = dtype.fields[field][0]
                out[field] = parse_fill_value(value[field], DataType(field, sub), where, zarr_format)
            return out[()]
        if kind in "SV":
            raw = _bytes_from_json(value, where)
            if kind == "V" and dtype.fields is None and len(raw) != dtype.itemsize:
                raise MetadataError(f"{where}: fill value has {len(raw)} bytes, {dtype} needs {dtype.itemsize}")
            if dtype.fields is not None:
                return np.frombuffer(raw.ljust(dtype.itemsize, b"\0")[: dtype.itemsize], dtype=dtype)[0]
            return np.array(raw, dtype=dtype)[()]
    except MetadataError:
        raise  # already says what is wrong, and where
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise MetadataError(f"{where}: fill value {value!r} is not valid for {dtype} ({exc})") from None
    raise UnsupportedFeatureError(f"{where}: no fill-value decoding for dtype {dtype}")


def _ml_fill(value: Any, dtype: np.dtype, where: str, zarr_format: int) -> Any:
    """An ml_dtypes fill value with the bits tensorstore gives it: int2/int4 sign-extended to the
    whole byte (as zarrs does too); floats from a number, "NaN"/"Infinity"/"-Infinity" or "0x…"
    bits, bfloat16 numbers rounded through float32 as tensorstore does, float8/float4 directly."""
    name = dtype.name
    if name in _ML_INTS:
        low, high = _ML_INTS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                or int(value) != value:
            raise MetadataError(f"{where}: fill value {value!r} must be an integer in [{low}, {high}] for {name}")
        return np.array(int(value), dtype=np.int8).view(dtype)[()]
    if zarr_format == 2 and name in _V2_BASE64_FILLS and isinstance(value, str):
        raw = _bytes_from_json(value, where)
        if len(raw) != dtype.itemsize:
            raise MetadataError(f"{where}: fill value {value!r} is {len(raw)} bytes, {name} needs {dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype)[0]
    number = _float_from_json(value, dtype, where)
    if name == "bfloat16" and not isinstance(number, np.generic):
        with np.errstate(over="ignore"):
            number = np.float32(number)
    return np.array(number, dtype=dtype)[()]


def _default_fill(dt: DataType) -> Any:
    """Zarr v2 `fill_value: null`: zarr-python fills with the type's zero (NaT for times)."""
    if dt.vlen == "utf8":
        return ""
    if dt.vlen == "bytes":
        return b""
    if dt.dtype.kind in "mM":
        return np.array("NaT", dtype=dt.dtype)[()]
    return np.zeros((), dtype=dt.dtype)[()]
