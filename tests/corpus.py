"""The test corpus: Zarr arrays and groups written by real writers, and what each must read back as.

Every case is written by zarr-python 3 (formats 3 and 2) or tensorstore (drivers ``zarr3`` and
``zarr``); a few are labelled ``hand``: a real writer's output whose chunk bytes or JSON were then
reshaped on purpose, to reach a form the installed writers no longer emit. Nothing else is forged.

A case is ``CorpusCase(name, writer, make, expected)``: ``make(path)`` writes one node (an array or a
group) at exactly ``path``; ``expected()`` is the content a correct reader returns (for a group, a
dict of member path -> array). Sources are deterministic (seeded by the case name) and structured so
that compression has something to do; every array is a few KB to a few hundred KB.

Combinations the writers refuse (dropped, so nothing here is faked):
- zarr-python 3.1.6: blosc cname "snappy" (not built into numcodecs' blosc); sharding of a 0-d
  array (IndexError inside zarr-python); bare-string codec names in ``codecs`` (its parser wants
  objects); ``numcodecs.shuffle`` as a filter (it is bytes->bytes, so it goes among compressors);
  ``numcodecs.pcodec`` / ``numcodecs.zfpy`` (their packages are not installed); v2 ``categorize``
  (zarr-python insists on a vlen-utf8 codec for str arrays); transpose before sharding when the
  inner chunk does not divide the *untransposed* chunk (zarr-python validates the wrong shape, so
  the transpose cases pick inner chunks dividing both); ``numcodecs.delta`` next to ``transpose``
  (delta flattens the chunk: before transpose the write fails, after it zarr-python reads back
  different values).
- tensorstore 0.1.86: zarr (v2) driver: "<U" and datetime dtypes (unsupported); structured dtypes
  are written one "field" at a time (``ts_fields``), subarray fields not at all; so are zarr3
  "struct" arrays, which zarr-python 3.1 cannot read (the source is their reference). zarr3: "r<N>"
  aborted the process on create in every spec tried; bfloat16 and int4 write fine but zarr-python cannot read them,
  so there would be no reference; dropped. tensorstore 0.1.86 writes zstd frames *with* the content
  size (checked for chunks of 40 B .. 400 KB, sharded or not); the frames without it come from the
  ``hand_*zstd_no_content_size`` cases, which re-frame zarr-python's zstd output losslessly.
- zarr-python 3.1.6 reads some valid files differently from the spec and tensorstore, so they have
  no case (a zarr-python reference would be wrong, a "source" one fails test_corpus): float16 hex
  fill values with a NaN payload ("0x7e01" reads as 0x7e00) and float32 signalling NaNs ("0x7f800001"
  reads quieted, 0x7fc00001) -- it parses hex fills through a Python float; a numcodecs array->array
  filter (delta, astype) followed by ``bytes`` endian "big" (it reads byte-swapped values), also
  ``numcodecs.astype`` with a big-endian encode_dtype before a little-endian ``bytes``; a 0-d or
  single-item vlen-bytes read (a 0-d "|S<n>", trailing NULs dropped), and likewise a single-item
  string read drops trailing NULs (a string "a" + NUL reads "a"); index_codecs with zstd, gzip or
  numcodecs shuffle/delta/astype/fixedscaleoffset (it writes them, then cannot size the index to
  read them; the numcodecs checksums crc32/adler32/fletcher32/jenkins_lookup3 it does read, and
  have cases). It writes v3 structured arrays with big-endian fields as raw big-endian bytes
  under a little-endian "bytes" codec (reads back garbage), drops ``BytesCodec(endian="big")``
  for structured, and writes v2 ``|O`` arrays with json2/pickle filters
  that it then refuses to open.
- zarr-python cannot *read* tensorstore's transpose-before-sharding when the inner chunk divides
  only the transposed shard (valid per the spec); those cases keep the source data as reference
  (``reference="source"``, checked against tensorstore's own read).
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numcodecs
import numpy as np
from checks import STRINGS

WRITERS = ("zarr-python-v3", "zarr-python-v2", "tensorstore-zarr3", "tensorstore-zarr2", "hand")


@dataclass(frozen=True)
class CorpusCase:
    name: str
    writer: str
    make: Callable[[Path], None] = field(repr=False)
    # Array content after writing (groups: {member path: array}); None: no reference data.
    expected: Callable[[], Any] | None = field(default=None, repr=False)
    kind: str = "array"  # "array" | "group"
    tags: frozenset[str] = frozenset()  # "sharded", "vlen", "partial", "lossy", "0d", ...
    # "zarr-python": zarr-python reads it and is the reference. "source": zarr-python cannot read
    # this writer's (valid) output, so the reference is the source data (checked with tensorstore).
    reference: str = "zarr-python"

    def __str__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------------------------
# Deterministic source data


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


_WORDS = ["", "a", "zarr", "ünïcödé", "日本語", "x" * 17, "tab\tsep", "emoji 🦀", "nul\x00in"]


def float_from_bits(bits: int, itemsize: int) -> np.floating:
    """The float (4 or 8 bytes) with exactly these bits, NaN payloads included."""
    return np.array(bits, dtype=f"<u{itemsize}").view(f"<f{itemsize}")[()]


def _float_specials(dt: np.dtype) -> list:
    """NaN (canonical and with a payload, both signs), ±inf, -0.0, a subnormal."""
    specials = [np.nan, -np.inf, np.inf, -0.0]
    native = dt.newbyteorder("=")
    if native.itemsize == 4:
        specials += [float_from_bits(0x7FC00123, 4), float_from_bits(0xFFC00000, 4), np.float32(1e-45)]
    elif native.itemsize == 8:
        specials += [float_from_bits(0x7FF8000000000ABC, 8), float_from_bits(0xFFF8000000000000, 8),
                     np.float64(5e-324)]
    return specials


@functools.lru_cache(maxsize=None)
def make_data(shape: tuple[int, ...], dtype: Any, seed: int, specials: bool = True) -> np.ndarray:
    """A smooth field plus small noise (compressible, not trivial); read-only, cached.

    ``dtype`` is a NumPy dtype (any byte order), or "string" / "bytes" for variable-length items
    (an object array). With ``specials`` floats carry NaNs (with payloads), infinities, -0.0 and a
    subnormal, integers their extremes, datetimes NaT.
    """
    rng = np.random.default_rng(seed)
    size = math.prod(shape)
    ramp = (np.indices(shape).sum(axis=0) if shape else np.zeros((), dtype=np.int64)).astype(np.int64)
    noise = rng.integers(0, 4, size=shape)
    if dtype in ("string", "bytes"):
        words = np.array(_WORDS, dtype=object)
        picks = (ramp + noise) % len(words)
        out = np.empty(shape, dtype=object)
        for i, w in np.ndenumerate(picks):
            text = words[w] + (str(int(ramp[i]) % 97) if (int(ramp[i]) % 5) else "")
            out[i] = text if dtype == "string" else text.encode("utf-8")
        out.setflags(write=False)
        return out
    dt = np.dtype(dtype)
    if dt.fields is not None:
        out = np.zeros(shape, dtype=dt)
        for k, (name, (fdt, _off)) in enumerate(dt.fields.items()):
            out[name] = make_data(shape, fdt, seed + k + 1, specials)
    elif dt.kind == "b":
        out = ((ramp + noise) % 3 == 0)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        vals = np.where((ramp % 11) == 3, -1, 1) * (ramp * 7 + noise)
        out = vals.astype(dt)  # wraps: deterministic, and exercises the high bits
        if specials and size >= 4:
            flat = out.reshape(-1)
            flat[1], flat[-2] = info.min, info.max
    elif dt.kind in "fc":
        real_dt = np.dtype(f"f{dt.itemsize // 2}") if dt.kind == "c" else dt.newbyteorder("=")
        def field_(offset: float) -> np.ndarray:
            v = np.sin(ramp * 0.15 + offset) * 100 + noise * 0.25
            return np.round(v, 1).astype(real_dt)
        out = field_(0.0)
        if dt.kind == "c":
            out = (out + 1j * field_(1.0)).astype(dt.newbyteorder("="))
        if specials and size >= 16:
            flat = out.reshape(-1)
            step = max(1, size // 13)
            reals = flat.view(real_dt)  # complex: real and imaginary parts interleaved
            for k, s in enumerate(_float_specials(real_dt)):
                pos = step * k + 1
                if dt.kind == "c":
                    reals[2 * pos + (k % 2)] = np.asarray(s, dtype=real_dt)
                else:
                    flat[pos] = np.asarray(s, dtype=real_dt)
        out = out.astype(dt)  # byte swapping keeps every bit, NaN payloads included
    elif dt.kind in "mM":
        out = (ramp * 86_400 + noise * 60 + 1_600_000_000).astype(dt)  # integer counts of the unit
        if specials and size >= 4:
            out.reshape(-1)[2] = np.array("NaT", dtype=dt)
    elif dt.kind == "S":
        words = [w.encode("utf-8")[: dt.itemsize] for w in _WORDS]
        out = np.array([words[int(i)] for i in ((ramp + noise) % len(words)).reshape(-1)], dtype=dt).reshape(shape)
    elif dt.kind == "U":
        words = [w[: dt.itemsize // 4] for w in _WORDS]
        out = np.array([words[int(i)] for i in ((ramp + noise) % len(words)).reshape(-1)], dtype=dt).reshape(shape)
    elif dt.kind == "V":
        base = (ramp.reshape(-1, 1) + np.arange(dt.itemsize)) % 7 + noise.reshape(-1, 1)
        out = base.astype(np.uint8).view(dt).reshape(shape)
    else:  # pragma: no cover
        raise TypeError(f"no generator for {dt}")
    # dtype again: 0-d arithmetic yields NumPy scalars, which are always native-endian
    out = np.array(out, dtype=dt, order="C", copy=True)  # (np.ascontiguousarray makes 0-d 1-d)
    out.setflags(write=False)
    return out


def filled(shape, dtype, fill, regions, src) -> np.ndarray:
    """The array a reader returns when only ``regions`` of ``src`` were written over ``fill``."""
    if regions is None:
        return _as_read(src)
    out = np.empty(shape, dtype=src.dtype)
    if src.dtype == object:
        out[...] = fill
    else:
        out[...] = np.asarray(fill, dtype=src.dtype)  # same-dtype copy: keeps NaN payload bits
    for r in regions:
        out[r] = src[r]
    return _as_read(out)


def _as_read(data: np.ndarray) -> np.ndarray:
    """Strings (an object array of str) as zarr-python 3 reads them, v2's vlen-utf8 included:
    NumPy's StringDType; read-only."""
    if data.dtype == object and data.size and all(type(x) is str for x in data.ravel().tolist()):
        data = data.astype(STRINGS)
    data.setflags(write=False)
    return data


def default_fill(dtype) -> Any:
    if dtype == "string":
        return ""
    if dtype == "bytes":
        return b""
    return np.zeros((), dtype=np.dtype(dtype))[()]


# ----------------------------------------------------------------------------------------------
# Writers

CASES: list[CorpusCase] = []


def _add(case: CorpusCase) -> CorpusCase:
    assert case.name not in {c.name for c in CASES}, case.name
    assert case.writer in WRITERS, case.writer
    CASES.append(case)
    return case


def _zarr_dtype(dtype):
    import zarr

    if dtype == "string":
        return str
    if dtype == "bytes":
        return zarr.dtype.VariableLengthBytes()
    return np.dtype(dtype)


def zp(name: str, fmt: int, shape: tuple, dtype: Any, chunks: tuple, *, regions=None,
       fill=None, transform=None, specials=True, tags=(), data=None, **create) -> CorpusCase:
    """A zarr-python array: ``zarr.create_array(**create)`` then ``a[r] = src[r]`` per region.

    ``fill``: the value unwritten elements read as (defaults to ``create["fill_value"]`` or the
    dtype's zero); ``transform``: maps the source to what a lossy chain returns.
    """
    seed = seed_of(name)
    writer = f"zarr-python-v{fmt}"

    def src():
        return data() if data is not None else make_data(tuple(shape), dtype, seed, specials)

    def expected():
        s = src()
        if transform is not None:
            s = transform(s)
        f = fill if fill is not None else create.get("fill_value")
        f = default_fill(dtype) if f is None else f
        return filled(shape, dtype, f, regions, s)

    def make(path: Path) -> None:
        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr-python warns about v2/numcodecs/string specs
            a = zarr.create_array(str(path), shape=shape, dtype=_zarr_dtype(dtype), chunks=chunks,
                                  zarr_format=fmt, **create)
            s = src()
            for r in (regions if regions is not None else [...]):
                a[r] = s[r]

    t = set(tags)
    from zarr.codecs import ShardingCodec

    if create.get("shards") or isinstance(create.get("serializer"), ShardingCodec):
        t.add("sharded")
    if regions is not None:
        t.add("partial")
    if transform is not None:
        t.add("lossy")
    if dtype in ("string", "bytes"):
        t.add("vlen")
    if len(shape) == 0:
        t.add("0d")
    return _add(CorpusCase(name, writer, make, expected, "array", frozenset(t)))


def _grid(chunk_shape) -> dict:
    return {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}}


def _ts_write(driver: str, path: Path, meta: dict, fill_value, shape, dtype, regions, src) -> None:
    """Create the array with tensorstore's `driver` and write `src` (only `regions` if given)."""
    import tensorstore as ts

    if fill_value is not None:
        meta = {**meta, "fill_value": _json_fill(fill_value)}
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)},
            "metadata": meta, "create": True, "delete_existing": True}
    t = ts.open(spec).result()
    for r in (regions if regions is not None else [...]):
        part = np.asarray(src[r])
        if np.dtype(dtype).kind == "S":  # the zarr driver exposes |S<n> as an extra byte axis
            part = np.ascontiguousarray(part).view("S1").reshape(part.shape + (np.dtype(dtype).itemsize,))
        t[r].write(part).result()


def _ts_data(name: str, shape: tuple, dtype: str, fill: Any, fill_value: Any, regions: Any,
             specials: bool) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """(source data, expected read) of a tensorstore case: the source, filled outside `regions`
    with `fill`, else the metadata's `fill_value`, else the dtype's default."""
    seed, np_dtype = seed_of(name), np.dtype(dtype)

    def src() -> np.ndarray:
        return make_data(tuple(shape), np_dtype, seed, specials)

    def expected() -> np.ndarray:
        f = fill if fill is not None else (fill_value if fill_value is not None else default_fill(np_dtype))
        return filled(shape, np_dtype, f, regions, src())

    return src, expected


def ts3(name: str, shape: tuple, dtype: str, chunk_shape: tuple, *, codecs=None, fill_value=None,
        fill=None, regions=None, specials=True, tags=(), reference="zarr-python", **meta_extra) -> CorpusCase:
    """A tensorstore ``zarr3`` array; ``codecs``/``fill_value`` are the JSON metadata values."""
    src, expected = _ts_data(name, shape, dtype, fill, fill_value, regions, specials)

    def make(path: Path) -> None:
        meta = {"shape": list(shape), "data_type": dtype, "chunk_grid": _grid(chunk_shape), **meta_extra}
        if codecs is not None:
            meta["codecs"] = codecs
        _ts_write("zarr3", path, meta, fill_value, shape, dtype, regions, src())

    t = set(tags)
    if codecs and "sharding_indexed" in json.dumps(codecs):
        t.add("sharded")
    if regions is not None:
        t.add("partial")
    if len(shape) == 0:
        t.add("0d")
    return _add(CorpusCase(name, "tensorstore-zarr3", make, expected, "array", frozenset(t), reference))


def ts2(name: str, shape: tuple, dtype: str, chunks: tuple, *, compressor="default", fill_value=None,
        fill=None, regions=None, specials=True, tags=(), **meta_extra) -> CorpusCase:
    """A tensorstore ``zarr`` (v2) array; ``compressor``/``fill_value`` are the .zarray values."""
    src, expected = _ts_data(name, shape, dtype, fill, fill_value, regions, specials)

    def make(path: Path) -> None:
        meta = {"shape": list(shape), "chunks": list(chunks), "dtype": dtype, **meta_extra}
        if compressor != "default":
            meta["compressor"] = compressor
        _ts_write("zarr", path, meta, fill_value, shape, dtype, regions, src())

    t = set(tags)
    if regions is not None:
        t.add("partial")
    return _add(CorpusCase(name, "tensorstore-zarr2", make, expected, "array", frozenset(t)))


def ts_fields(name: str, fmt: int, shape: tuple, fields: list, chunks: tuple, *, regions=None, tags=(),
              endian: str = "little", **meta_extra) -> CorpusCase:
    """A tensorstore structured array (``fields`` a list of [name, numpy type]): ``zarr`` (v2) with
    a structured dtype, or ``zarr3`` with the ``struct`` data type stored in ``endian`` order.
    tensorstore opens a structured array one ``field`` at a time, so each field is written through
    its own handle. The fill value is left to tensorstore: null in v2, zero per field in v3."""
    seed = seed_of(name)
    np_dtype = np.dtype([tuple(f) for f in fields])

    def src():
        return make_data(tuple(shape), np_dtype, seed)

    def expected():
        return filled(shape, np_dtype, default_fill(np_dtype), regions, src())

    if fmt == 2:
        driver, writer = "zarr", "tensorstore-zarr2"
        meta = {"shape": list(shape), "chunks": list(chunks), "dtype": [list(f) for f in fields], **meta_extra}
    else:
        driver, writer = "zarr3", "tensorstore-zarr3"
        struct = [{"name": f, "data_type": np.dtype(t).name} for f, t in fields]
        meta = {"shape": list(shape), "chunk_grid": _grid(chunks), **meta_extra,
                "data_type": {"name": "struct", "configuration": {"fields": struct}},
                "codecs": [{"name": "bytes", "configuration": {"endian": endian}}]}

    def make(path: Path) -> None:
        import tensorstore as ts

        s = src()
        for k, fname in enumerate(np_dtype.names):
            spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}, "field": fname}
            spec.update({"metadata": meta, "create": True, "delete_existing": True} if k == 0 else {"open": True})
            t = ts.open(spec).result()
            for r in (regions if regions is not None else [...]):
                t[r].write(np.ascontiguousarray(s[fname][r])).result()

    t = set(tags) | {"structured"}
    if regions is not None:
        t.add("partial")
    # zarr-python 3.1 cannot read the v3 struct data type: the source is the reference there
    return _add(CorpusCase(name, writer, make, expected, "array", frozenset(t),
                           "zarr-python" if fmt == 2 else "source"))


def _json_fill(v):
    if isinstance(v, (str, int, bool, list)):
        return v
    if isinstance(v, complex) or np.iscomplexobj(v):
        return [_json_fill(float(np.real(v))), _json_fill(float(np.imag(v)))]
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return f


# ----------------------------------------------------------------------------------------------
# zarr-python v3

def _zarr_v3_cases() -> None:
    from zarr.codecs import (BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec,
                             TransposeCodec, ZstdCodec)
    import zarr.codecs.numcodecs as znc

    S2, C2 = (29, 31), (8, 10)  # 4 x 4 chunks, the last row and column partial

    # every numeric dtype with the default chain (bytes + zstd)
    for dt in ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64", "complex64", "complex128"]:
        zp(f"zp3_dtype_{dt}", 3, S2, dt, C2)
    # other data types zarr-python 3 writes
    zp("zp3_dtype_string", 3, S2, "string", C2)
    zp("zp3_dtype_vlen_bytes", 3, S2, "bytes", C2)
    zp("zp3_dtype_fixed_utf32", 3, (40,), "<U6", (16,))
    zp("zp3_dtype_null_terminated_bytes", 3, (40,), "S5", (16,))
    zp("zp3_dtype_raw_bytes_r24", 3, (40,), "V3", (16,))
    zp("zp3_dtype_structured", 3, (40,), np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "u1")]), (16,))
    zp("zp3_dtype_datetime64_s", 3, (40,), "<M8[s]", (16,))
    zp("zp3_dtype_datetime64_10ms", 3, (40,), "<M8[10ms]", (16,))
    zp("zp3_dtype_datetime64_ns_nat_fill", 3, (40,), "<M8[ns]", (16,),
       fill_value=np.datetime64("NaT", "ns"), regions=[np.s_[:20]])
    zp("zp3_dtype_timedelta64_ms", 3, (40,), "<m8[ms]", (16,))

    # bytes codec, big endian
    for dt in ["int16", "uint64", "float32", "float64", "complex128"]:
        zp(f"zp3_bytes_big_{dt}", 3, S2, dt, C2, serializer=BytesCodec(endian="big"))

    # transpose in several orders
    zp("zp3_transpose_10", 3, S2, "int32", C2, filters=[TransposeCodec(order=(1, 0))])
    zp("zp3_transpose_201", 3, (9, 14, 11), "float32", (4, 5, 3), filters=[TransposeCodec(order=(2, 0, 1))])
    zp("zp3_transpose_120_big", 3, (9, 14, 11), "int16", (4, 5, 3),
       filters=[TransposeCodec(order=(1, 2, 0))], serializer=BytesCodec(endian="big"))
    zp("zp3_transpose_3102_4d", 3, (5, 6, 7, 4), "uint16", (2, 3, 4, 3), filters=[TransposeCodec(order=(3, 1, 0, 2))])
    zp("zp3_transpose_identity", 3, S2, "float64", C2, filters=[TransposeCodec(order=(0, 1))])

    # zstd
    for level in (-3, 1, 10, 22):
        zp(f"zp3_zstd_level{level}", 3, S2, "float64", C2, compressors=[ZstdCodec(level=level)])
    zp("zp3_zstd_checksum", 3, S2, "int64", C2, compressors=[ZstdCodec(level=3, checksum=True)])
    zp("zp3_zstd_multi_block", 3, (260, 300), "float32", (200, 300), compressors=[ZstdCodec(level=3)])  # 3 blocks
    # gzip
    for level in (1, 9):
        zp(f"zp3_gzip_level{level}", 3, S2, "int32", C2, compressors=[GzipCodec(level=level)])
    # blosc: every cname x every shuffle
    for cname in ("lz4", "lz4hc", "blosclz", "zstd", "zlib"):
        for shuffle in ("noshuffle", "shuffle", "bitshuffle"):
            zp(f"zp3_blosc_{cname}_{shuffle}", 3, S2, "float32", C2,
               compressors=[BloscCodec(cname=cname, clevel=5, shuffle=shuffle)])
    zp("zp3_blosc_typesize1_shuffle_i8", 3, S2, "int64", C2,
       compressors=[BloscCodec(cname="lz4", shuffle="shuffle", typesize=1)])
    zp("zp3_blosc_typesize8_on_u2", 3, S2, "uint16", C2,
       compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle", typesize=8)])
    zp("zp3_blosc_blocksize64_clevel9", 3, S2, "float64", C2,
       compressors=[BloscCodec(cname="lz4hc", clevel=9, shuffle="shuffle", blocksize=64)])
    zp("zp3_blosc_clevel0", 3, S2, "int16", C2, compressors=[BloscCodec(cname="blosclz", clevel=0)])
    # crc32c
    zp("zp3_crc32c_only", 3, S2, "uint32", C2, compressors=[Crc32cCodec()])
    zp("zp3_zstd_crc32c", 3, S2, "float64", C2, compressors=[ZstdCodec(level=2), Crc32cCodec()])
    zp("zp3_no_compressor", 3, S2, "int32", C2, compressors=None)
    zp("zp3_gzip_zstd_crc32c_stack", 3, S2, "int16", C2,
       compressors=[GzipCodec(level=3), ZstdCodec(level=1), Crc32cCodec()])

    # numcodecs.* bytes->bytes
    for nm, codec in [("lz4", znc.LZ4()), ("lz4_accel", znc.LZ4(acceleration=5)), ("zlib", znc.Zlib(level=5)),
                      ("gzip", znc.GZip(level=4)), ("bz2", znc.BZ2(level=9)), ("lzma", znc.LZMA()),
                      ("blosc", znc.Blosc(cname="zstd", shuffle=2)), ("zstd", znc.Zstd(level=3)),
                      ("crc32", znc.CRC32()), ("adler32", znc.Adler32()), ("fletcher32", znc.Fletcher32()),
                      ("jenkins_lookup3", znc.JenkinsLookup3())]:
        zp(f"zp3_numcodecs_{nm}", 3, S2, "int32", C2, compressors=[codec])
    zp("zp3_numcodecs_shuffle_zstd", 3, S2, "float64", C2, compressors=[znc.Shuffle(elementsize=8), ZstdCodec()])
    zp("zp3_numcodecs_fletcher32_after_lz4", 3, S2, "int16", C2, compressors=[znc.LZ4(), znc.Fletcher32()])
    # numcodecs.* array->array (filters)
    zp("zp3_numcodecs_delta", 3, S2, "int32", C2, filters=[znc.Delta(dtype="<i4")])
    zp("zp3_numcodecs_delta_u2", 3, (700,), "uint16", (128,), filters=[znc.Delta(dtype="<u2")])
    fso = numcodecs.FixedScaleOffset(offset=3.0, scale=100, dtype="<f8", astype="<i4")
    zp("zp3_numcodecs_fixedscaleoffset", 3, S2, "float64", C2, specials=False,
       filters=[znc.FixedScaleOffset(offset=3.0, scale=100, dtype="<f8", astype="<i4")], transform=_lossy(fso))
    br = numcodecs.BitRound(keepbits=7)
    zp("zp3_numcodecs_bitround", 3, S2, "float32", C2, specials=False,
       filters=[znc.BitRound(keepbits=7)], transform=_lossy(br))
    qz = numcodecs.Quantize(digits=2, dtype="<f8")
    zp("zp3_numcodecs_quantize", 3, S2, "float64", C2, specials=False,
       filters=[znc.Quantize(digits=2, dtype="<f8")], transform=_lossy(qz))
    at = numcodecs.AsType(encode_dtype="<f4", decode_dtype="<f8")
    zp("zp3_numcodecs_astype_f8_as_f4", 3, S2, "float64", C2, specials=False,
       filters=[znc.AsType(encode_dtype="<f4", decode_dtype="<f8")], transform=_lossy(at))
    zp("zp3_numcodecs_astype_i8_as_i2", 3, S2, "int64", C2, specials=False,
       filters=[znc.AsType(encode_dtype="<i2", decode_dtype="<i8")])
    zp("zp3_numcodecs_packbits", 3, (13, 37), "bool", (5, 11), filters=[znc.PackBits()])
    zp("zp3_numcodecs_delta_shuffle_zlib_crc32c_chain", 3, S2, "int64", C2,
       filters=[znc.Delta(dtype="<i8")],
       compressors=[znc.Shuffle(elementsize=8), znc.Zlib(level=1), Crc32cCodec()])

    # sharding
    SS, SC = (30, 41), (4, 5)  # shards (16, 20): 2 x 3 shards (the last row/column are edge shards)
    zp("zp3_shard_end", 3, SS, "int32", SC, shards=(16, 20))
    zp("zp3_shard_start", 3, SS, "float64", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_location="start",
                                codecs=[BytesCodec(), ZstdCodec(level=3, checksum=True)]))
    zp("zp3_shard_index_no_crc_end", 3, SS, "uint16", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_location="end", index_codecs=[BytesCodec()]))
    zp("zp3_shard_index_no_crc_start", 3, SS, "int8", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_location="start", index_codecs=[BytesCodec()]))
    zp("zp3_shard_index_big_endian", 3, SS, "int32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_codecs=[BytesCodec(endian="big"), Crc32cCodec()]))
    zp("zp3_shard_inner_blosc_big", 3, SS, "float32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, codecs=[BytesCodec(endian="big"),
                                                        BloscCodec(cname="lz4", shuffle="bitshuffle")]))
    zp("zp3_shard_inner_transpose_gzip", 3, (9, 14, 11), "int16", (8, 10, 11), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=(4, 5, 11), codecs=[TransposeCodec(order=(2, 1, 0)), BytesCodec(),
                                                                 GzipCodec(level=5), Crc32cCodec()]))
    zp("zp3_shard_partial_empty_inner", 3, SS, "int32", SC, shards=(16, 20), fill_value=-7,
       regions=[np.s_[1:6, 2:9], np.s_[17:19, 30:41]])
    zp("zp3_shard_partial_nan_fill", 3, SS, "float32", SC, shards=(16, 20), fill_value=np.nan,
       regions=[np.s_[:4, :]], tags=("missing-shard",))
    zp("zp3_shard_one_inner_chunk", 3, S2, "uint8", (8, 10), shards=(8, 10))
    zp("zp3_shard_whole_array", 3, S2, "int64", (10, 11), shards=(30, 33))
    zp("zp3_shard_1d", 3, (1000,), "float64", (25,), shards=(200,))
    zp("zp3_shard_3d", 3, (9, 14, 11), "uint32", (2, 3, 2), shards=(4, 6, 6))
    zp("zp3_shard_4d", 3, (5, 6, 7, 4), "int16", (1, 2, 3, 2), shards=(2, 4, 6, 4))
    zp("zp3_shard_string", 3, (50,), "string", (6,), shards=(24,))
    zp("zp3_shard_nested", 3, SS, "int32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=(8, 10), codecs=[ShardingCodec(chunk_shape=(4, 5),
                                codecs=[BytesCodec(), ZstdCodec(level=1)])]))
    zp("zp3_shard_nested_start_partial", 3, SS, "uint16", (16, 20), compressors=None, filters=None, fill_value=9,
       regions=[np.s_[3:11, 5:25]],
       serializer=ShardingCodec(chunk_shape=(8, 10), index_location="start",
                                codecs=[ShardingCodec(chunk_shape=(2, 5), index_location="end")]))
    # the shard's one inner chunk is itself a shard of the same shape, at the same key and offset
    # (an index cache keyed by key and offset alone gave it the outer index)
    zp("zp3_shard_nested_same_shape", 3, SS, "int32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=(16, 20), index_location="end",
                                codecs=[ShardingCodec(chunk_shape=(8, 10), index_location="start")]))
    # transpose before sharding: the shard is the chunk in transposed order (20, 16); inner (4, 4)
    # divides both (16, 20) and (20, 16), which zarr-python requires.
    zp("zp3_transpose_then_shard", 3, SS, "float64", (16, 20), compressors=None,
       filters=[TransposeCodec(order=(1, 0))], serializer=ShardingCodec(chunk_shape=(4, 4)))
    zp("zp3_transpose_then_shard_3d", 3, (9, 14, 11), "int32", (2, 4, 6), compressors=None,
       filters=[TransposeCodec(order=(2, 0, 1))], serializer=ShardingCodec(chunk_shape=(2, 2, 2)))

    # fill values and never-written chunks
    part = [np.s_[:8, :10], np.s_[20:, 25:]]
    zp("zp3_fill_nan_missing", 3, S2, "float64", C2, fill_value=np.nan, regions=part)
    zp("zp3_fill_posinf_missing", 3, S2, "float32", C2, fill_value=np.inf, regions=part)
    zp("zp3_fill_neginf_missing", 3, S2, "float16", C2, fill_value=-np.inf, regions=part)
    zp("zp3_fill_negzero_missing", 3, S2, "float64", C2, fill_value=-0.0, regions=part)
    zp("zp3_fill_int_missing", 3, S2, "int16", C2, fill_value=-1234, regions=part)
    zp("zp3_fill_uint64_max_missing", 3, S2, "uint64", C2, fill_value=np.iinfo("u8").max, regions=part)
    zp("zp3_fill_int64_min_missing", 3, S2, "int64", C2, fill_value=np.iinfo("i8").min, regions=part)
    zp("zp3_fill_complex_missing", 3, S2, "complex64", C2, fill_value=complex(1.5, -2.25), regions=part)
    zp("zp3_fill_complex_nan_inf_missing", 3, S2, "complex128", C2, fill_value=complex(np.nan, -np.inf),
       regions=part)
    zp("zp3_fill_bool_true_missing", 3, S2, "bool", C2, fill_value=True, regions=part)
    zp("zp3_fill_string_missing", 3, S2, "string", C2, fill_value="n/a", regions=part)
    zp("zp3_nothing_written", 3, S2, "int32", C2, fill_value=42, regions=[])

    # chunk key encodings
    zp("zp3_key_default_dot", 3, (9, 14, 11), "int32", (4, 5, 3),
       chunk_key_encoding={"name": "default", "separator": "."})
    zp("zp3_key_v2_dot", 3, (9, 14, 11), "int32", (4, 5, 3), chunk_key_encoding={"name": "v2", "separator": "."})
    zp("zp3_key_v2_slash", 3, (9, 14, 11), "int32", (4, 5, 3), chunk_key_encoding={"name": "v2", "separator": "/"})
    zp("zp3_key_v2_dot_0d", 3, (), "float64", (), chunk_key_encoding={"name": "v2", "separator": "."})
    zp("zp3_key_default_dot_sharded", 3, SS, "int32", SC, shards=(16, 20),
       chunk_key_encoding={"name": "default", "separator": "."})

    # shapes
    zp("zp3_0d_int32", 3, (), "int32", ())
    zp("zp3_0d_float64_nan_fill_unwritten", 3, (), "float64", (), fill_value=np.nan, regions=[])
    zp("zp3_0d_complex64", 3, (), "complex64", ())
    zp("zp3_1d", 3, (1001,), "float32", (64,))
    zp("zp3_3d", 3, (9, 14, 11), "int64", (4, 5, 3))
    zp("zp3_4d", 3, (5, 6, 7, 4), "float32", (2, 3, 4, 3))
    zp("zp3_chunk_larger_than_array", 3, (7, 5), "int32", (16, 16))
    zp("zp3_chunk_one", 3, (6, 5), "int8", (1, 1))
    zp("zp3_size0_dim", 3, (0, 9), "int32", (4, 4))
    zp("zp3_size0_dim_sharded", 3, (12, 0), "float32", (2, 2), shards=(4, 4))
    zp("zp3_long_thin", 3, (3, 2000), "uint8", (2, 300))

    # names and attributes
    zp("zp3_dimension_names", 3, (9, 14, 11), "float32", (4, 5, 3), dimension_names=["time", None, "x"],
       attributes={"units": "K", "nested": {"a": [1, 2.5, None, True]}, "ünï": "ok"})

    # fill value in raw bits: tensorstore writes them, see ts3 cases.


def _lossy(codec) -> Callable[[np.ndarray], np.ndarray]:
    """What a lossy filter returns: decode(encode(src)), in the source's shape and dtype."""
    def run(src: np.ndarray) -> np.ndarray:
        out = np.asarray(codec.decode(codec.encode(np.array(src, order="C"))))
        out = out.reshape(src.shape).astype(src.dtype, copy=False)
        out.setflags(write=False)
        return out
    return run


# ----------------------------------------------------------------------------------------------
# zarr-python v2

def _zarr_v2_cases() -> None:
    S2, C2 = (29, 31), (8, 10)
    for dt in ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16",
               ">i2", ">i4", ">i8", ">u4", ">u8", ">f2", ">f4", ">f8", ">c8", ">c16"]:
        tag = dt.replace("<", "le_").replace(">", "be_").replace("|", "")
        zp(f"zp2_dtype_{tag}", 2, S2, dt, C2)
    zp("zp2_dtype_S6", 2, (40,), "|S6", (16,))
    zp("zp2_dtype_U5", 2, (40,), "<U5", (16,))
    zp("zp2_dtype_U5_big", 2, (40,), ">U5", (16,))
    zp("zp2_dtype_V4", 2, (40,), "|V4", (16,))
    zp("zp2_dtype_M8_ns", 2, (40,), "<M8[ns]", (16,))
    zp("zp2_dtype_m8_s", 2, (40,), "<m8[s]", (16,))
    zp("zp2_dtype_structured", 2, (40,), np.dtype([("x", "<f4"), ("y", ">i2")]), (16,))
    zp("zp2_dtype_vlen_utf8", 2, (50,), "string", (16,))
    zp("zp2_dtype_vlen_bytes", 2, (50,), "bytes", (16,))

    # compressors
    for nm, comp in [("zlib", numcodecs.Zlib(level=6)), ("gzip", numcodecs.GZip(level=5)),
                     ("lz4", numcodecs.LZ4()), ("zstd", numcodecs.Zstd(level=5)),
                     ("zstd_checksum", numcodecs.Zstd(level=1, checksum=True)),
                     ("bz2", numcodecs.BZ2(level=5)), ("lzma", numcodecs.LZMA(preset=1)), ("none", None)]:
        zp(f"zp2_compressor_{nm}", 2, S2, "<f8", C2, compressors=comp)
    for cname, shuffle in [("lz4", 0), ("lz4", 1), ("lz4", 2), ("zstd", 1), ("zstd", 2), ("blosclz", 0),
                           ("blosclz", 2), ("lz4hc", 1), ("zlib", 2), ("zlib", 0), ("lz4", -1)]:
        zp(f"zp2_blosc_{cname}_shuffle{shuffle}".replace("-1", "auto"), 2, S2, "<i4", C2,
           compressors=numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle))
    zp("zp2_blosc_blocksize128", 2, S2, ">f8", C2, compressors=numcodecs.Blosc(cname="zstd", shuffle=1, blocksize=128))

    # filters
    zp("zp2_filter_delta", 2, S2, "<i8", C2, filters=[numcodecs.Delta(dtype="<i8")])
    zp("zp2_filter_delta_astype", 2, (700,), "<u2", (128,), filters=[numcodecs.Delta(dtype="<u2", astype="<i4")])
    fso = numcodecs.FixedScaleOffset(offset=1000, scale=10, dtype="<f8", astype="<u2")
    zp("zp2_filter_fixedscaleoffset", 2, S2, "<f8", C2, specials=False, filters=[fso], transform=_lossy(fso))
    qz = numcodecs.Quantize(digits=3, dtype="<f4")
    zp("zp2_filter_quantize", 2, S2, "<f4", C2, specials=False, filters=[qz], transform=_lossy(qz))
    at = numcodecs.AsType(encode_dtype="<f4", decode_dtype="<f8")
    zp("zp2_filter_astype", 2, S2, "<f8", C2, specials=False, filters=[at], transform=_lossy(at))
    zp("zp2_filter_shuffle", 2, S2, "<f8", C2, filters=[numcodecs.Shuffle(elementsize=8)],
       compressors=numcodecs.Zlib(level=1))
    zp("zp2_filter_packbits", 2, (13, 37), "|b1", (5, 11), filters=[numcodecs.PackBits()], compressors=None)
    zp("zp2_filter_chain_quantize_shuffle_delta", 2, S2, "<f8", C2, specials=False,
       filters=[numcodecs.Quantize(digits=2, dtype="<f8"), numcodecs.Shuffle(elementsize=8)],
       compressors=numcodecs.Zstd(level=1), transform=_lossy(numcodecs.Quantize(digits=2, dtype="<f8")))
    zp("zp2_filter_delta_big_endian", 2, S2, ">i4", C2, filters=[numcodecs.Delta(dtype=">i4")])

    # order F, dimension separator, shapes
    zp("zp2_order_F", 2, S2, "<i4", C2, order="F")
    zp("zp2_order_F_3d_blosc", 2, (9, 14, 11), ">f4", (4, 5, 3), order="F",
       compressors=numcodecs.Blosc(cname="lz4", shuffle=1))
    zp("zp2_order_F_partial", 2, (9, 14, 11), "<u2", (4, 5, 3), order="F", fill_value=5,
       regions=[np.s_[:4, :5, :]])
    zp("zp2_order_F_complex", 2, S2, "<c16", C2, order="F")
    zp("zp2_dim_sep_slash", 2, (9, 14, 11), "<i4", (4, 5, 3),
       chunk_key_encoding={"name": "v2", "separator": "/"})
    zp("zp2_0d", 2, (), "<f8", ())
    zp("zp2_1d", 2, (1001,), "<i2", (64,))
    zp("zp2_4d", 2, (5, 6, 7, 4), "<f4", (2, 3, 4, 3))
    zp("zp2_chunk_larger_than_array", 2, (7, 5), "<i4", (16, 16))
    zp("zp2_size0_dim", 2, (0, 9), "<i4", (4, 4))

    # fill values
    part = [np.s_[:8, :10], np.s_[20:, 25:]]
    zp("zp2_fill_null", 2, S2, "<i4", C2, fill_value=None, regions=part)
    zp("zp2_fill_null_f8", 2, S2, "<f8", C2, fill_value=None, regions=part)
    zp("zp2_fill_nan", 2, S2, "<f4", C2, fill_value=np.nan, regions=part)
    zp("zp2_fill_infinity", 2, S2, "<f8", C2, fill_value=np.inf, regions=part)
    zp("zp2_fill_neg_infinity", 2, S2, ">f8", C2, fill_value=-np.inf, regions=part)
    zp("zp2_fill_int", 2, S2, "<i2", C2, fill_value=-3, regions=part)
    zp("zp2_fill_uint64_max", 2, S2, "<u8", C2, fill_value=np.iinfo("u8").max, regions=part)
    zp("zp2_fill_bool_true", 2, S2, "|b1", C2, fill_value=True, regions=part)
    zp("zp2_fill_complex", 2, S2, "<c8", C2, fill_value=complex(-1, 2), regions=part)
    zp("zp2_fill_bytes_base64", 2, (40,), "|S3", (16,), fill_value=b"xy", regions=[np.s_[:10]])
    zp("zp2_fill_string", 2, (50,), "string", (16,), fill_value="-", regions=[np.s_[:10]])
    zp("zp2_nothing_written", 2, S2, "<f8", C2, fill_value=2.5, regions=[])

    zp("zp2_attributes", 2, (9, 14, 11), "<f4", (4, 5, 3), attributes={"units": "m", "list": [1, 2], "ü": None})


# ----------------------------------------------------------------------------------------------
# tensorstore

def _tensorstore_cases() -> None:
    S, C = (29, 31), (8, 10)
    LE = {"name": "bytes", "configuration": {"endian": "little"}}
    BE = {"name": "bytes", "configuration": {"endian": "big"}}
    CRC = {"name": "crc32c"}

    def zstd(level=3, checksum=False):
        return {"name": "zstd", "configuration": {"level": level, "checksum": checksum}}

    def shard(chunk_shape, codecs=None, index_codecs=None, location=None):
        cfg = {"chunk_shape": list(chunk_shape)}
        if codecs is not None:
            cfg["codecs"] = codecs
        if index_codecs is not None:
            cfg["index_codecs"] = index_codecs
        if location is not None:
            cfg["index_location"] = location
        return {"name": "sharding_indexed", "configuration": cfg}

    for dt in ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64", "complex64", "complex128"]:
        ts3(f"ts3_dtype_{dt}", S, dt, C)
    ts3("ts3_zstd", S, "float64", C, codecs=[LE, zstd(3)])
    ts3("ts3_zstd_level19_checksum", S, "int32", C, codecs=[LE, zstd(19, True)])
    ts3("ts3_zstd_big_1d_chunk", (50_000,), "int32", (20_000,), codecs=[LE, zstd(1)])
    # chunks of several zstd blocks (at most 128 KiB each): a window decodes only the blocks it reads
    ts3("ts3_zstd_multi_block", (300, 250), "int32", (200, 250), codecs=[LE, zstd(3)])
    ts3("ts3_zstd_multi_block_sharded", (300, 250), "uint16", (300, 250),
        codecs=[shard((150, 250), codecs=[BE, zstd(1)])])
    ts3("ts3_gzip", S, "uint16", C, codecs=[LE, {"name": "gzip", "configuration": {"level": 6}}])
    ts3("ts3_gzip_crc32c", S, "float32", C, codecs=[BE, {"name": "gzip", "configuration": {"level": 1}}, CRC])
    for cname, shuffle in [("lz4", "shuffle"), ("lz4hc", "bitshuffle"), ("blosclz", "noshuffle"),
                           ("zstd", "shuffle"), ("zlib", "bitshuffle")]:
        ts3(f"ts3_blosc_{cname}_{shuffle}", S, "int32", C,
            codecs=[LE, {"name": "blosc", "configuration": {"cname": cname, "clevel": 5, "shuffle": shuffle,
                                                            "typesize": 4}}])
    ts3("ts3_crc32c", S, "int64", C, codecs=[LE, CRC])
    ts3("ts3_transpose_10", S, "int32", C, codecs=[{"name": "transpose", "configuration": {"order": [1, 0]}}, LE])
    ts3("ts3_transpose_021_zstd", (9, 14, 11), "float64", (4, 5, 3),
        codecs=[{"name": "transpose", "configuration": {"order": [0, 2, 1]}}, BE, zstd(2)])

    SS = (30, 41)
    ts3("ts3_shard_end", SS, "int32", (16, 20), codecs=[shard((4, 5), [LE, zstd(1)], [LE, CRC], "end")])
    ts3("ts3_shard_start", SS, "float32", (16, 20), codecs=[shard((4, 5), [LE, zstd(1)], [LE, CRC], "start")])
    ts3("ts3_shard_default_config", SS, "uint8", (16, 20), codecs=[shard((4, 5))])
    ts3("ts3_shard_index_no_crc", SS, "int16", (16, 20), codecs=[shard((4, 5), [LE], [LE], "end")])
    ts3("ts3_shard_index_no_crc_start", SS, "int16", (16, 20), codecs=[shard((4, 5), [BE, zstd(2)], [LE], "start")])
    ts3("ts3_shard_blosc_inner", SS, "float64", (16, 20),
        codecs=[shard((8, 10), [LE, {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 9,
                                                                         "shuffle": "shuffle", "typesize": 8}}])])
    ts3("ts3_shard_partial_empty_inner", SS, "uint16", (16, 20), fill_value=7,
        codecs=[shard((4, 5), [LE, zstd(1)], [LE, CRC], "start")], regions=[np.s_[:, :3], np.s_[18:22, 20:30]])
    ts3("ts3_shard_nested", SS, "int32", (16, 40),
        codecs=[shard((8, 20), [shard((4, 5), [LE, zstd(1)], [LE, CRC], "end")], [LE, CRC], "start")])
    # Transpose before sharding: the shard is the chunk in transposed order, (6, 4, 6), and the inner
    # chunk (3, 2, 3) divides that but not (4, 6, 6). Valid per the spec; zarr-python 3.1.6 refuses
    # to open it (it checks divisibility against the untransposed chunk), so the source data is the
    # reference here.
    ts3("ts3_shard_transpose_before", (9, 14, 11), "int32", (4, 6, 6), reference="source",
        codecs=[{"name": "transpose", "configuration": {"order": [2, 0, 1]}}, shard((3, 2, 3), [LE, zstd(1)])])
    ts3("ts3_shard_transpose_before_partial", (9, 14, 11), "float32", (4, 6, 6), reference="source",
        fill_value="NaN", fill=np.float32(np.nan), regions=[np.s_[:5, 2:9, :4]],
        codecs=[{"name": "transpose", "configuration": {"order": [1, 2, 0]}},
                shard((3, 2, 2), [LE, zstd(1)], [LE, CRC], "start")])
    ts3("ts3_shard_inner_transpose_gzip", SS, "float32", (16, 20),
        codecs=[shard((4, 5), [{"name": "transpose", "configuration": {"order": [1, 0]}}, LE,
                               {"name": "gzip", "configuration": {"level": 5}}, CRC])])
    ts3("ts3_shard_4d", (5, 6, 7, 4), "float32", (4, 4, 4, 4), codecs=[shard((2, 2, 2, 2), [LE, zstd(1)])])
    # index_codecs beyond bytes (+ crc32c): tensorstore accepts any fixed-size chain (transpose of
    # the (…, 2) index array, the index in big endian without a checksum, two crc32c in a row)
    ts3("ts3_shard_index_transpose_crc", SS, "int32", (16, 20),
        codecs=[shard((4, 5), [LE, zstd(1)], [{"name": "transpose", "configuration": {"order": [2, 1, 0]}}, LE, CRC])])
    ts3("ts3_shard_index_transpose_be_start_partial", SS, "float32", (16, 20), fill_value=-1.5,
        regions=[np.s_[2:9, 3:25]],
        codecs=[shard((4, 5), [LE], [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, BE], "start")])
    ts3("ts3_shard_index_crc_twice", SS, "uint16", (16, 20), codecs=[shard((4, 5), [LE], [LE, CRC, CRC], "end")])

    ts3("ts3_fill_nan_partial", S, "float32", C, fill_value="NaN", fill=np.float32(np.nan),
        regions=[np.s_[:9, :]], dimension_names=["y", None])
    nan_payload = float_from_bits(0x7FC00001, 4)
    ts3("ts3_fill_nan_payload_hex", S, "float32", C, fill_value="0x7fc00001", fill=nan_payload,
        regions=[np.s_[:9, :]])
    ts3("ts3_fill_hex_f64", S, "float64", C, fill_value="0xfff0000000000001",
        fill=float_from_bits(0xFFF0000000000001, 8), regions=[np.s_[:, :12]])
    ts3("ts3_fill_complex_inf", S, "complex64", C, fill_value=[1.5, "-Infinity"],
        fill=np.complex64(complex(1.5, -np.inf)), regions=[np.s_[:9, :]])
    ts3("ts3_fill_uint64_max", S, "uint64", C, fill_value=2**64 - 1, fill=np.uint64(2**64 - 1), regions=[np.s_[:9, :]])
    ts3("ts3_fill_bool_true", S, "bool", C, fill_value=True, fill=True, regions=[np.s_[:9, :]])
    ts3("ts3_key_dot", (9, 14, 11), "int32", (4, 5, 3),
        chunk_key_encoding={"name": "default", "configuration": {"separator": "."}})
    ts3("ts3_key_v2", (9, 14, 11), "int32", (4, 5, 3), chunk_key_encoding={"name": "v2"})
    ts3("ts3_key_v2_slash", (9, 14, 11), "int32", (4, 5, 3),
        chunk_key_encoding={"name": "v2", "configuration": {"separator": "/"}})
    ts3("ts3_0d", (), "float64", (), codecs=[BE, zstd(1)])
    ts3("ts3_4d", (5, 6, 7, 4), "int16", (2, 3, 4, 3))
    ts3("ts3_chunk_larger_than_array", (7, 5), "int32", (16, 16))
    ts3("ts3_attributes_dimension_names", (9, 14, 11), "uint32", (4, 5, 3),
        dimension_names=["z", "y", "x"], attributes={"source": "tensorstore", "v": [1, 2]})

    # tensorstore zarr (v2) driver
    ts2("ts2_default_blosc", S, "<i4", C)
    for cname, shuffle in [("lz4", 0), ("zstd", 2), ("lz4hc", 1), ("blosclz", 1), ("zlib", 2)]:
        ts2(f"ts2_blosc_{cname}_shuffle{shuffle}", S, "<f8", C,
            compressor={"id": "blosc", "cname": cname, "clevel": 5, "shuffle": shuffle})
    ts2("ts2_zlib", S, ">i8", C, compressor={"id": "zlib", "level": 3})
    ts2("ts2_zstd", S, "<u2", C, compressor={"id": "zstd", "level": 3})
    ts2("ts2_gzip", S, "<f4", C, compressor={"id": "gzip", "level": 5})
    ts2("ts2_bz2", S, "<i2", C, compressor={"id": "bz2", "level": 5})
    ts2("ts2_none", S, ">u4", C, compressor=None)
    for dt in ["|b1", "|i1", "|u1", ">i2", "<u8", "<f2", ">f4", ">f8", "<c8", ">c16", "|S4"]:
        tag = dt.replace("<", "le_").replace(">", "be_").replace("|", "")
        ts2(f"ts2_dtype_{tag}", S if dt != "|S4" else (40,), dt, C if dt != "|S4" else (16,))
    ts2("ts2_order_F", (9, 14, 11), "<i4", (4, 5, 3), order="F")
    ts2("ts2_order_F_zstd_big", S, ">f8", C, order="F", compressor={"id": "zstd", "level": 1})
    ts2("ts2_dim_sep_slash", (9, 14, 11), "<i4", (4, 5, 3), dimension_separator="/")
    ts2("ts2_fill_nan_partial", S, "<f8", C, fill_value="NaN", fill=np.nan, regions=[np.s_[:9, :]])
    ts2("ts2_fill_int_partial", S, "<i2", C, fill_value=-5, fill=np.int16(-5), regions=[np.s_[:, :12]])
    ts2("ts2_0d", (), "<i4", ())
    # structured dtypes: tensorstore writes them one named field at a time; fill_value stays null
    ts_fields("ts2_structured", 2, (40,), [["a", "<i4"], ["b", "<f8"]], (16,))
    ts_fields("ts2_structured_big_first_order_F", 2, (9, 7), [["a", ">i2"], ["b", "<f4"], ["c", "|u1"]], (4, 3),
              order="F")
    ts_fields("ts2_structured_partial_fill_null", 2, (40,), [["a", "<u2"], ["b", ">f4"]], (16,),
              regions=[np.s_[:10]], compressor={"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1})
    # zarr3 "struct": fill value zero per field, multi-byte fields in the bytes codec's order
    ts_fields("ts3_struct_little_partial", 3, (9, 7), [["a", "<i4"], ["b", "<f8"], ["c", "|u1"]], (4, 3),
              regions=[np.s_[1:7, 2:]])
    ts_fields("ts3_struct_big", 3, (40,), [["a", "<u2"], ["b", "<f4"], ["c", "<i8"]], (16,), endian="big")


# ----------------------------------------------------------------------------------------------
# More zarr-python kinds: found missing from the cases above (several of them once read wrongly)

def _item_0d(item) -> np.ndarray:
    """A 0-d object array holding one str/bytes item (the seeded words may pick "", which zarr-python
    never stores). Left writable: zarr-python 3.1.6 cannot write a 0-d bytes item from a read-only array."""
    out = np.empty((), dtype=object)
    out[()] = item
    return out


def _zarr_more_cases() -> None:
    from zarr.codecs import (BytesCodec, Crc32cCodec, ShardingCodec, TransposeCodec, VLenUTF8Codec,
                             ZstdCodec)

    SS, SC = (30, 41), (4, 5)
    # fixed_length_utf32 stored big endian: each 4-byte code point is swapped, not the whole item
    zp("zp3_fixed_utf32_bytes_big", 3, (40,), "<U6", (16,), serializer=BytesCodec(endian="big"))
    zp("zp3_fixed_utf32_bytes_big_fill_partial", 3, (40,), "<U4", (16,), serializer=BytesCodec(endian="big"),
       fill_value="ab", regions=[np.s_[3:20]])
    zp("zp3_fixed_utf32_shard_inner_big_transpose", 3, (12, 9), "<U3", (8, 9), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=(4, 3), codecs=[TransposeCodec(order=(1, 0)), BytesCodec(endian="big"),
                                                             ZstdCodec(level=1)]))
    # 0-d variable-length arrays (the chunk is one item). No 0-d vlen-bytes case: zarr-python 3.1.6
    # reads one back as a 0-d '|S<n>' array (trailing NULs lost), so test_corpus cannot check it;
    # gpuzarr fails those the same way as the 0-d strings here.
    zp("zp3_0d_string", 3, (), "string", ())
    zp("zp3_0d_string_crc32c", 3, (), "string", (), compressors=[ZstdCodec(level=1), Crc32cCodec()],
       data=lambda: _item_0d("0-d ünïcödé 🦀"))
    zp("zp2_0d_vlen_utf8", 2, (), "string", ())
    # shard index codecs other than bytes + crc32c
    zp("zp3_shard_index_transpose", 3, SS, "int32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_codecs=[TransposeCodec(order=(2, 1, 0)), BytesCodec(),
                                                               Crc32cCodec()]))
    zp("zp3_shard_index_crc32c_twice_start", 3, SS, "float64", (16, 20), compressors=None, filters=None,
       fill_value=np.nan, regions=[np.s_[:7, 5:33]],
       serializer=ShardingCodec(chunk_shape=SC, index_location="start",
                                index_codecs=[BytesCodec(), Crc32cCodec(), Crc32cCodec()]))
    # numcodecs checksums as shard index codecs: fixed size (4 bytes each, before or after the
    # index); zarr-python 3.1.6 writes and reads them (tensorstore does not know numcodecs.*).
    # Not numcodecs.shuffle: zarr-python writes it but cannot size the index to read it back.
    import zarr.codecs.numcodecs as znc

    zp("zp3_shard_index_numcodecs_crc32", 3, SS, "int16", (16, 20), compressors=None, filters=None,
       fill_value=4, regions=[np.s_[2:9, 3:30], np.s_[25:, 38:]],
       serializer=ShardingCodec(chunk_shape=SC, codecs=[BytesCodec(), ZstdCodec(level=1)],
                                index_codecs=[BytesCodec(), znc.CRC32()]))
    zp("zp3_shard_index_numcodecs_adler32_start", 3, SS, "float32", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_location="start", index_codecs=[BytesCodec(), znc.Adler32()]))
    zp("zp3_shard_index_numcodecs_fletcher32", 3, SS, "uint8", (16, 20), compressors=None, filters=None,
       serializer=ShardingCodec(chunk_shape=SC, index_codecs=[BytesCodec(), znc.Fletcher32()]))
    zp("zp3_shard_index_numcodecs_jenkins_lookup3_start", 3, SS, "int64", (16, 20), compressors=None, filters=None,
       fill_value=-1, regions=[np.s_[:7, 5:33]],
       serializer=ShardingCodec(chunk_shape=SC, index_location="start",
                                index_codecs=[BytesCodec(), znc.JenkinsLookup3()]))
    zp("zp3_shard_index_crc32c_then_numcodecs_crc32_at_end", 3, SS, "uint32", (16, 20), compressors=None,
       filters=None, serializer=ShardingCodec(chunk_shape=SC, index_codecs=[BytesCodec(endian="big"), Crc32cCodec(),
                                                                             znc.CRC32(location="end")]))
    # sharding followed by a bytes->bytes codec over the whole shard
    zp("zp3_shard_then_zstd", 3, SS, "int32", (16, 20), filters=None, compressors=[ZstdCodec(level=1)],
       serializer=ShardingCodec(chunk_shape=SC))
    zp("zp3_string_shard_then_zstd", 3, (50,), "string", (10,), filters=None, compressors=[ZstdCodec(level=1)],
       serializer=ShardingCodec(chunk_shape=(5,), codecs=[VLenUTF8Codec()]))
    zp("zp3_string_nested_shard_start_partial", 3, (30, 20), "string", (16, 10), compressors=None, filters=None,
       fill_value="f", regions=[np.s_[:9, :7], np.s_[20:, 15:]],
       serializer=ShardingCodec(chunk_shape=(8, 10), index_location="start",
                                codecs=[ShardingCodec(chunk_shape=(4, 5), codecs=[VLenUTF8Codec(), ZstdCodec()])]))
    # other dtypes
    zp("zp3_dtype_datetime64_ns_bytes_big", 3, (40,), "<M8[ns]", (16,), serializer=BytesCodec(endian="big"))
    zp("zp3_dtype_structured_nested", 3, (40,), np.dtype([("a", "<i4"), ("b", [("x", "<f4"), ("y", "u1")])]), (16,))
    zp("zp3_0d_structured", 3, (), np.dtype([("a", "<i2"), ("b", "<f4")]), ())
    zp("zp3_6d_sharded", 3, (3, 2, 4, 3, 2, 3), "uint8", (1, 1, 2, 1, 1, 3), shards=(2, 2, 4, 3, 2, 3))

    # zarr v2: datetimes. fill_value null reads as NaT in zarr-python (not 0); big-endian datetimes
    # keep their fill value (NaT by default) in big-endian order like the data.
    nat_ns, nat_ms = np.datetime64("NaT", "ns"), np.timedelta64("NaT", "ms")
    zp("zp2_fill_null_datetime64", 2, (40,), "<M8[ns]", (16,), fill_value=None, fill=nat_ns, regions=[np.s_[:10]])
    zp("zp2_fill_null_timedelta64_order_F", 2, (9, 7), "<m8[ms]", (4, 3), order="F", fill_value=None, fill=nat_ms,
       regions=[np.s_[:4]])
    zp("zp2_dtype_be_M8_default_fill_missing", 2, (40,), ">M8[ns]", (16,), fill=nat_ns, regions=[np.s_[:10]])
    zp("zp2_dtype_be_m8_fill_missing", 2, (40,), ">m8[s]", (16,), fill_value=np.timedelta64(5, "s"),
       regions=[np.s_[:10]])
    zp("zp2_dtype_be_M8_D_fill_date", 2, (9, 7), ">M8[D]", (4, 3), fill_value=np.datetime64("2020-02-02", "D"),
       regions=[np.s_[:4]])
    # zarr v2: fill_value null on structured / raw types (zarr-python reports fill_value None)
    st = np.dtype([("a", "<i4"), ("b", "<f8")])
    zp("zp2_fill_null_structured", 2, (40,), st, (16,), fill_value=None, regions=[np.s_[:10]])
    zp("zp2_fill_null_V3", 2, (40,), "|V3", (16,), fill_value=None, regions=[np.s_[:10]])
    zp("zp2_dtype_structured_big_first", 2, (40,), np.dtype([("a", ">i4"), ("b", "<f8"), ("c", "|b1")]), (16,))


# ----------------------------------------------------------------------------------------------
# Hand-made: real writer output, reshaped on purpose (see each docstring)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_drop_content_size(frame: bytes) -> bytes:
    """The same zstd frame without its Frame_Content_Size field (as streaming writers emit it).

    Clears the Single_Segment flag and adds a Window_Descriptor large enough for the content; the
    blocks are untouched, so the frame decodes to the same bytes.
    """
    assert frame[:4] == ZSTD_MAGIC, "not a zstd frame"
    fhd = frame[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos, window = 5, None
    if not single:
        window, pos = frame[5:6], 6
    dict_id = frame[pos:pos + (0, 1, 2, 4)[dict_flag]]
    pos += len(dict_id)
    fcs_size = ((1 if single else 0), 2, 4, 8)[fcs_flag]
    content = int.from_bytes(frame[pos:pos + fcs_size], "little") + (256 if fcs_size == 2 else 0)
    pos += fcs_size
    if window is None:
        window = bytes([max(0, (max(content, 1) - 1).bit_length() - 10) << 3])
    return frame[:4] + bytes([fhd & 0x1F]) + window + dict_id + frame[pos:]


def _rewrite_files(path: Path, fn: Callable[[bytes], bytes], skip=("zarr.json", ".zarray", ".zattrs")) -> int:
    n = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f in skip:
                continue
            p = Path(root) / f
            p.write_bytes(fn(p.read_bytes()))
            n += 1
    assert n, f"no chunk files under {path}"
    return n


def _reshard(blob: bytes, n_chunks: int, fn: Callable[[bytes], bytes]) -> bytes:
    """Rebuild a shard (index at end, bytes little + crc32c) with every inner chunk passed through fn."""
    import crc32c

    index_len = 16 * n_chunks + 4
    body, index = blob[:-index_len], blob[-index_len:]
    entries = np.frombuffer(index[:-4], "<u8").reshape(-1, 2)
    out, new = bytearray(), np.full_like(entries, np.iinfo(np.uint64).max)
    for i in np.argsort(entries[:, 0], kind="stable"):
        off, nb = (int(v) for v in entries[i])
        if nb == 2**64 - 1:
            continue
        chunk = fn(body[off:off + nb])
        new[i] = (len(out), len(chunk))
        out += chunk
    idx = new.astype("<u8").tobytes()
    return bytes(out) + idx + crc32c.crc32c(idx).to_bytes(4, "little")


def _hand_cases() -> None:
    from zarr.codecs import ShardingCodec, ZstdCodec, BytesCodec

    base3 = zp("_base_hand_v3_zstd", 3, (29, 31), "float64", (8, 10), compressors=[ZstdCodec(level=5)])
    base2 = zp("_base_hand_v2_zstd", 2, (29, 31), "<i8", (8, 10), compressors=numcodecs.Zstd(level=5))
    base_sh = zp("_base_hand_v3_shard_zstd", 3, (30, 41), "int32", (16, 20), compressors=None, filters=None,
                 fill_value=-1, regions=[np.s_[:20, :30]],
                 serializer=ShardingCodec(chunk_shape=(4, 5), codecs=[BytesCodec(), ZstdCodec(level=3, checksum=True)]))
    base_mu = zp("_base_hand_v3_must_understand", 3, (29, 31), "uint8", (8, 10))
    struct_dtype = np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "u1"), ("d", "<u2")])
    base_st = zp("_base_hand_v3_structured", 3, (37,), struct_dtype, (8,), regions=[np.s_[3:20]],
                 fill_value=np.array((7, 1.5, 2, 9), dtype=struct_dtype)[()], compressors=None)
    for b in (base3, base2, base_sh, base_mu, base_st):
        CASES.remove(b)  # only building blocks

    def hand(name, base, post, tags=(), reference="zarr-python"):
        def make(path: Path) -> None:
            base.make(path)
            post(path)
        return _add(CorpusCase(name, "hand", make, base.expected, "array", base.tags | frozenset(tags), reference))

    hand("hand_v3_zstd_no_content_size", base3,
         lambda p: _rewrite_files(p, zstd_drop_content_size), tags=("zstd-no-fcs",))
    hand("hand_v2_zstd_no_content_size", base2,
         lambda p: _rewrite_files(p, zstd_drop_content_size), tags=("zstd-no-fcs",))
    hand("hand_v3_shard_zstd_no_content_size", base_sh,
         lambda p: _rewrite_files(p, lambda b: _reshard(b, 16, zstd_drop_content_size)), tags=("zstd-no-fcs",))

    def must_understand(path: Path) -> None:
        meta = json.loads((path / "zarr.json").read_text())
        meta["my_extension"] = {"must_understand": False, "anything": [1, 2]}
        meta["storage_transformers"] = []
        (path / "zarr.json").write_text(json.dumps(meta, indent=2))
    # JSON edit: an unknown top-level key marked must_understand=false, and empty storage_transformers
    hand("hand_v3_unknown_key_must_understand_false", base_mu, must_understand)

    def as_struct(spec):
        if isinstance(spec, dict) and spec.get("name") in ("structured", "struct"):
            fields = [f if isinstance(f, dict) else {"name": f[0], "data_type": f[1]}
                      for f in spec["configuration"]["fields"]]
            return {"name": "struct", "configuration": {"fields": [
                {"name": f["name"], "data_type": as_struct(f["data_type"])} for f in fields]}}
        return spec

    def struct_metadata(endian: str) -> Callable[[Path], None]:
        def post(path: Path) -> None:
            meta = json.loads((path / "zarr.json").read_text())
            meta["data_type"] = as_struct(meta["data_type"])
            meta["fill_value"] = {"a": 7, "b": 1.5, "c": 2, "d": 9}
            meta["codecs"] = [{"name": "bytes", "configuration": {"endian": endian}}]
            (path / "zarr.json").write_text(json.dumps(meta, indent=2))
            if endian == "big":  # every field of every stored element in big-endian order
                _rewrite_files(path, lambda b: np.frombuffer(b, struct_dtype).astype(
                    struct_dtype.newbyteorder(">")).tobytes())
        return post
    # JSON edit: the "struct" data type (zarr-extensions) that zarr-python 3.2+ and tensorstore
    # write, with a fill value per field, stored in either byte order; zarr-python 3.1 cannot
    # read it, so the source is the reference (tensorstore reads it, and checks it)
    for endian in ("little", "big"):
        hand(f"hand_v3_struct_data_type_{endian}", base_st, struct_metadata(endian), tags=("structured",),
             reference="source")


# ----------------------------------------------------------------------------------------------
# Groups

def _group(name: str, fmt: int, consolidated: bool) -> CorpusCase:
    """root (attrs) / a (int32) / .dot.ü-x (int16) / sub (attrs) / sub/b (float64, attrs) / sub/deeper/c / empty."""
    members = {
        "a": dict(shape=(30,), dtype="int32", chunks=(7,)),
        "sub/b": dict(shape=(9, 14), dtype="float64", chunks=(4, 5),
                      **({"shards": (8, 10)} if fmt == 3 else {})),
        "sub/deeper/c": dict(shape=(5, 6, 7), dtype="uint16", chunks=(2, 3, 4)),
        "sub/deeper/s": dict(shape=(12,), dtype="string", chunks=(5,)),
        # a valid name that starts with a dot (and holds another, a dash and a non-ASCII letter):
        # zarr-python lists it among the members, consolidated v2 metadata included
        ".dot.ü-x": dict(shape=(11,), dtype="int16", chunks=(4,)),
    }

    def src(path):
        m = members[path]
        return make_data(m["shape"], m["dtype"], seed_of(name + path))

    def expected():
        return {p: _as_read(src(p)) for p in members}

    def make(path: Path) -> None:
        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = zarr.open_group(str(path), mode="w", zarr_format=fmt,
                                   attributes={"title": name, "n": [1, 2, 3]})
            sub = root.create_group("sub", attributes={"level": 1})
            sub.create_group("deeper").create_group("deepest", attributes={"leaf": True})
            root.create_group("empty")
            for p, m in members.items():
                kw = {k: v for k, v in m.items() if k not in ("dtype",)}
                arr = root.create_array(p, dtype=_zarr_dtype(m["dtype"]), attributes={"member": p}, **kw)
                arr[...] = src(p)
            if consolidated:
                zarr.consolidate_metadata(str(path))

    tags = {"consolidated"} if consolidated else set()
    return _add(CorpusCase(name, f"zarr-python-v{fmt}", make, expected, "group", frozenset(tags)))


def _group_cases() -> None:
    _group("zp3_group_nested", 3, consolidated=False)
    _group("zp3_group_consolidated", 3, consolidated=True)
    _group("zp2_group_nested", 2, consolidated=False)
    _group("zp2_group_consolidated", 2, consolidated=True)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # zarr-python: "numcodecs codecs are not in the v3 spec"
    _zarr_v3_cases()
    _zarr_v2_cases()
    _tensorstore_cases()
    _zarr_more_cases()
    _hand_cases()
    _group_cases()

ARRAY_CASES = [c for c in CASES if c.kind == "array"]
GROUP_CASES = [c for c in CASES if c.kind == "group"]
BY_NAME = {c.name: c for c in CASES}

# Members of group cases, addressed as "<group case>/<member>".
GROUP_MEMBERS = ["a", "sub/b", "sub/deeper/c", "sub/deeper/s", ".dot.ü-x"]


def write_corpus(root: Path, cases=None) -> dict[str, BaseException]:
    """Write every case under ``root/<name>``; returns {name: error} for the cases that failed."""
    errors: dict[str, BaseException] = {}
    root = Path(root)
    for case in (CASES if cases is None else cases):
        try:
            case.make(root / case.name)
        except Exception as e:  # reported per case by the tests
            errors[case.name] = e
    return errors


if __name__ == "__main__":  # python tests/corpus.py [dir]: write the corpus and summarise it
    import collections
    import sys
    import tempfile
    import time

    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gpuzarr-corpus-"))
    t0 = time.perf_counter()
    errs = write_corpus(out)
    print(f"{len(CASES)} cases in {time.perf_counter() - t0:.1f}s under {out}")
    print(dict(collections.Counter(c.writer for c in CASES)))
    for k, e in errs.items():
        print("FAILED", k, type(e).__name__, e)
