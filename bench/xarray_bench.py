"""python -m bench --xarray: `xr.open_dataset(path, engine=..., **kw).load()` of a climate-like
Dataset (three (time, lat, lon) data variables: two float32, one int16 packed with
scale_factor/add_offset/_FillValue; time/lat/lon coordinates) written by `Dataset.to_zarr` as Zarr
v3 (sharded, zstd) and Zarr v2 (blosc-lz4 + shuffle). See bench/README.md.

Rows: engine="zarr" with zarr-python's default BatchedCodecPipeline, engine="zarr" with zarrs'
pipeline, engine="zarr" with gpuzarr's (`gpuzarr.CodecPipeline`), and engine="gpuzarr". The
pipeline an engine="zarr" row really opened with is checked (a silently ignored config is an
error). Each row's first open+load is the check: its Dataset must be `xr.testing.assert_identical`
to engine="zarr"'s, with the same dtypes, and hold NumPy arrays; a row that differs is reported as
ERR (MISMATCH) and the exit status is 1.

Floor, measured in the same rounds (shared/BENCHMARKS.md: the codec's own decompression, every
core, nothing else): every chunk or shard file of every array is read whole from the page cache
(`open().read()`) and each of its compressed frames decompressed (python-zstandard for zstd,
numcodecs' blosc binding for blosc, one call per frame, single-threaded calls) on a pool of one
thread per core, files handed out largest first; `floor:1t` is the same in one thread. Frame
offsets (shard indexes) are parsed beforehand, outside the timer. Not in the floor: metadata,
xarray's CF decoding (the int16 variable becomes float64: scale, offset, mask) and the output
assembly, which every engine must also do; so a ratio to the floor of 1 is out of reach.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .datasets import cache_key, cache_slot

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GEN_VERSION = 1  # bump when the generated data or its encoding changes
FORMATS = ("v3", "v2")
DEFAULT_GRID = (512, 512)  # lat, lon
DECODED_BYTES_PER_POINT = 4 + 4 + 8  # float32 + float32 + (int16 decoded by xarray to float64)


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    engine: str
    pipeline: str | None = None  # zarr's codec_pipeline.path while opening and loading
    expect: str | None = None  # module.class of the codec pipeline the zarr arrays must get

    def context(self) -> contextlib.AbstractContextManager:
        if self.pipeline is None:
            return contextlib.nullcontext()
        import zarr

        return zarr.config.set({"codec_pipeline.path": self.pipeline})


ROWS = (
    Row("zarr", 'engine="zarr"', "zarr", "zarr.core.codec_pipeline.BatchedCodecPipeline",
        "zarr.core.codec_pipeline.BatchedCodecPipeline"),
    Row("zarr+zarrs", 'engine="zarr" + zarrs pipeline', "zarr", "zarrs.ZarrsCodecPipeline",
        "zarrs.ZarrsCodecPipeline"),
    Row("zarr+gpuzarr", 'engine="zarr" + gpuzarr pipeline', "zarr", "gpuzarr.CodecPipeline",
        "gpuzarr.CodecPipeline"),
    Row("gpuzarr", 'engine="gpuzarr"', "gpuzarr"),
)
ROW_KEYS = tuple(r.key for r in ROWS)


def _zarr_arrays(ds: Any) -> list:
    """The zarr.Array behind each variable xarray opened lazily (through its wrappers)."""
    import zarr

    found = []
    for var in ds.variables.values():
        obj, seen = var._data, 0
        while obj is not None and seen < 10:
            if isinstance(obj, zarr.Array):
                found.append(obj)
                break
            nxt = getattr(obj, "array", None)
            obj, seen = (getattr(obj, "_array", None) if nxt is None else nxt), seen + 1
    return found


def _pipeline_check(row: Row, ds: Any) -> str | None:
    """None when every zarr array of the opened dataset got the expected codec pipeline."""
    if row.expect is None:
        return None
    arrays = _zarr_arrays(ds)
    if not arrays:
        return "found no zarr.Array behind the opened variables to check its codec pipeline"
    for arr in arrays:
        cls = type(arr._async_array.codec_pipeline)
        got = f"{cls.__module__}.{cls.__name__}"
        if got != row.expect:
            return f"opened with codec pipeline {got}, expected {row.expect} (config ignored?)"
    return None


def open_dataset(row: Row, path: Path) -> Any:
    import xarray as xr

    return xr.open_dataset(path, engine=row.engine)


def open_load(row: Row, path: Path) -> tuple[Any, float, float]:
    """(loaded Dataset, seconds to open, seconds to open and load); the caller enters the row's
    context (outside every timer)."""
    t0 = time.perf_counter()
    ds = open_dataset(row, path)
    t1 = time.perf_counter()
    ds.load()
    t2 = time.perf_counter()
    return ds, t1 - t0, t2 - t0


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class XSpec:
    fmt: str  # "v3" or "v2"
    shape: tuple[int, int, int]  # time, lat, lon
    chunks: tuple[int, int, int]  # inner chunks (v3) or chunks (v2)
    shards: tuple[int, int, int] | None
    codec: str
    seed: int = 0

    @property
    def key(self) -> str:
        return cache_key(f"xr-{self.fmt}", asdict(self), GEN_VERSION)

    @property
    def decoded_nbytes(self) -> int:
        return math.prod(self.shape) * DECODED_BYTES_PER_POINT

    def describe(self) -> str:
        x = lambda t: "x".join(map(str, t))  # noqa: E731
        shards = f"shards {x(self.shards)}, inner chunks" if self.shards else "chunks"
        return (f"Zarr {self.fmt}, (time, lat, lon) {x(self.shape)}, {shards} {x(self.chunks)}, {self.codec}; "
                f"temperature f4, humidity f4, precip i2 packed (-> f8); {self.decoded_nbytes / 2**20:.0f} MiB decoded")


def _fit(shard: int, size: int, chunk: int) -> int:
    return min(shard, -(-size // chunk) * chunk)


def make_spec(fmt: str, mib: float, grid: tuple[int, int], seed: int = 0) -> XSpec:
    ny, nx = grid
    nt = max(2, round(mib * 2**20 / (DECODED_BYTES_PER_POINT * ny * nx)))
    if fmt == "v3":
        chunks = (min(4, nt), min(128, ny), min(128, nx))
        shards = (_fit(16, nt, chunks[0]), _fit(512, ny, chunks[1]), _fit(512, nx, chunks[2]))
        return XSpec("v3", (nt, ny, nx), chunks, shards, "zstd level 3", seed)
    if fmt == "v2":
        return XSpec("v2", (nt, ny, nx), (min(4, nt), min(256, ny), min(256, nx)), None,
                     "blosc lz4 level 5 + byte shuffle", seed)
    raise ValueError(fmt)


def generate(spec: XSpec) -> Any:
    """The Dataset (deterministic in spec.seed): smooth fields plus noise, quantised as
    observations are (temperature to 1/64 K, humidity to 0.1 %, precipitation to 0.01 mm, ~3% of
    it missing), so chunks compress as real data do, unevenly, never like zeros."""
    import pandas as pd
    import xarray as xr

    nt, ny, nx = spec.shape
    lat = np.linspace(-90 + 90 / ny, 90 - 90 / ny, ny)
    lon = np.linspace(0, 360, nx, endpoint=False)
    coslat = np.cos(np.deg2rad(lat)).astype(np.float32)[:, None]
    lon_r = np.deg2rad(lon).astype(np.float32)[None, :]
    temp = np.empty(spec.shape, np.float32)
    hum = np.empty(spec.shape, np.float32)
    precip = np.empty(spec.shape, np.float32)
    for t in range(nt):
        rng = np.random.default_rng([spec.seed, t])
        phase = np.float32(2 * math.pi * t / 24)
        wave = np.sin(np.float32(3) * lon_r + phase) * np.cos(np.float32(2) * np.deg2rad(lat).astype(np.float32)[:, None])
        temp[t] = np.round((np.float32(245) + np.float32(50) * coslat + np.float32(6) * wave
                            + rng.normal(0, 0.4, (ny, nx)).astype(np.float32)) * 64) / 64
        hum[t] = np.round(np.clip(np.float32(60) + np.float32(30) * wave
                                  + rng.normal(0, 3, (ny, nx)).astype(np.float32), 0, 100), 1)
        rain = np.maximum(wave - np.float32(0.2), 0) * rng.gamma(0.6, 6.0, (ny, nx)).astype(np.float32)
        rain = np.round(np.minimum(rain, 300), 2)
        rain[rng.random((ny, nx)) < 0.03] = np.nan
        precip[t] = rain
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {"temperature": (dims, temp, {"units": "K", "long_name": "air temperature at 2 m"}),
         "humidity": (dims, hum, {"units": "%", "long_name": "relative humidity"}),
         "precip": (dims, precip, {"units": "mm", "long_name": "precipitation over 6 h"})},
        coords={"time": pd.date_range("2000-01-01", periods=nt, freq="6h"),
                "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})},
        attrs={"title": "gpuzarr xarray benchmark", "bench": spec.key})


def encoding(spec: XSpec, ds: Any) -> dict:
    if spec.fmt == "v3":
        from zarr.codecs import ZstdCodec

        comp = (ZstdCodec(level=3),)
        data = {"chunks": spec.chunks, "shards": spec.shards, "compressors": comp}
    else:
        import numcodecs

        comp = (numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),)
        data = {"chunks": spec.chunks, "compressors": comp}
    enc = {name: dict(data) for name in ds.data_vars}
    enc["precip"].update({"dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0, "_FillValue": np.int16(-32768)})
    enc.update({name: {"compressors": comp} for name in ds.coords})
    return enc


def ensure(spec: XSpec, cache: Path) -> tuple[Path, dict]:
    """The dataset's path in the cache, written (and checked against the generator) if absent."""
    path, info, tmp = cache_slot(cache, spec.key)
    if info is not None:
        return path, info
    _log(f"generating {spec.describe()} -> {path}")
    t0 = time.perf_counter()
    ds = generate(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python: consolidated metadata is not part of the v3 spec
        ds.to_zarr(tmp, zarr_format=int(spec.fmt[1]), encoding=encoding(spec, ds), mode="w")
    check = _check_written(ds, tmp)
    os.replace(tmp, path)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    from importlib.metadata import version

    info = {"spec": asdict(spec), "gen_version": GEN_VERSION, "path": str(path), "stored_bytes": stored,
            "written_by": f"xarray {version('xarray')}, zarr-python {version('zarr')}", "check": check,
            "seconds": round(time.perf_counter() - t0, 1)}
    (cache / f"{spec.key}.json").write_text(json.dumps(info, indent=2))
    _log(f"  {stored / 2**20:.1f} MiB stored, {info['seconds']} s")
    return path, info


def _check_written(want: Any, path: Path) -> str:
    """engine="zarr" (zarr-python's default pipeline) must read back what was generated: floats
    exactly, the packed variable to within half its scale_factor with the same missing points."""
    import xarray as xr

    with ROWS[0].context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xr.open_dataset(path, engine="zarr").load()
    for name in ("temperature", "humidity"):
        if not np.array_equal(got[name].values, want[name].values):
            raise RuntimeError(f"{path}: {name} reads back differently from the generated data")
    a, b = got["precip"].values, want["precip"].values
    if not (np.array_equal(np.isnan(a), np.isnan(b)) and np.nanmax(np.abs(a - b)) <= 0.0051):
        raise RuntimeError(f"{path}: precip reads back differently from the generated data")
    for name in want.coords:
        if not np.array_equal(got[name].values, want[name].values):
            raise RuntimeError(f"{path}: coordinate {name} reads back differently")
    return "engine=zarr read back the generated values (precip within 0.005)"


# --------------------------------------------------------------------------- floor


class Floor:
    """Read the compressed bytes of every array (one `os.pread` per run of frames) and decompress
    each frame. Tasks are runs of consecutive frames of one file, cut at ~1/8 of a thread's share
    so the pool stays balanced however few the shards; a v2 chunk file is one task."""

    def __init__(self, path: Path):
        files: list[tuple[Path, list[tuple[int, int]], str]] = []  # (file, frames (offset, size), codec)
        for meta_file in sorted(path.rglob("zarr.json")) + sorted(path.rglob(".zarray")):
            meta = json.loads(meta_file.read_text())
            if meta_file.name == "zarr.json" and meta.get("node_type") != "array":
                continue
            files.extend(_array_files(meta_file.parent, meta))
        self.n_files = len(files)
        self.compressed_bytes = sum(size for _, frames, _ in files for _, size in frames)
        self.n_frames = sum(len(frames) for _, frames, _ in files)
        self.n_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cut = max(1 << 18, self.compressed_bytes // (8 * self.n_threads))
        # tasks: (file, start, length, frames relative to start, codec)
        self.tasks: list[tuple[str, int, int, list[tuple[int, int]], str]] = []
        for f, frames, codec in files:
            run: list[tuple[int, int]] = []
            for off, size in sorted(frames) + [(-1, 0)]:
                contiguous = run and off == run[-1][0] + run[-1][1]
                if run and (off < 0 or not contiguous or run[-1][0] + run[-1][1] - run[0][0] >= cut):
                    start = run[0][0]
                    length = run[-1][0] + run[-1][1] - start
                    self.tasks.append((str(f), start, length, [(o - start, n) for o, n in run], codec))
                    run = []
                if off >= 0:
                    run.append((off, size))
        self.tasks.sort(key=lambda t: -t[2])  # largest first
        self._local = threading.local()
        self.pools = {"floor": ThreadPoolExecutor(self.n_threads, thread_name_prefix="bench-floor"),
                      "floor:1t": ThreadPoolExecutor(1, thread_name_prefix="bench-floor1")}
        self.decoded = sum(self._one(t) for t in self.tasks)  # checks every frame decodes

    def _one(self, task: tuple[str, int, int, list[tuple[int, int]], str]) -> int:
        path, start, length, frames, codec = task
        fd = os.open(path, os.O_RDONLY)
        try:
            blob = memoryview(os.pread(fd, length, start))
        finally:
            os.close(fd)
        n = 0
        if codec == "zstd":
            dctx = getattr(self._local, "dctx", None)
            if dctx is None:
                import zstandard

                dctx = self._local.dctx = zstandard.ZstdDecompressor()
            for off, size in frames:
                n += len(dctx.decompress(blob[off:off + size]))
        elif codec == "blosc":
            from numcodecs import blosc

            for off, size in frames:  # on a worker thread: blosc_decompress_ctx, one blosc thread, no GIL
                n += len(blosc.decompress(blob[off:off + size]))
        else:  # no compressor: the bytes as they are
            n += sum(size for _, size in frames)
        return n

    def timer(self, variant: str) -> Callable[[], float]:
        pool = self.pools[variant]

        def run() -> float:
            t0 = time.perf_counter()
            total = sum(pool.map(self._one, self.tasks))
            seconds = time.perf_counter() - t0
            if total != self.decoded:
                raise RuntimeError(f"decoded {total} bytes, expected {self.decoded}")
            return seconds

        return run

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()


def _codec_name(conf: Any) -> str:
    if conf is None:
        return "none"
    name = conf.get("name") or conf.get("id")
    if name in ("zstd", "blosc"):
        return name
    raise RuntimeError(f"the floor does not decode {name}")


def _array_files(adir: Path, meta: dict) -> list[tuple[Path, list[tuple[int, int]], str]]:
    skip = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    chunk_files = sorted(f for f in adir.rglob("*") if f.is_file() and f.name not in skip)
    if meta.get("zarr_format") == 2:
        if meta.get("filters"):
            raise RuntimeError(f"{adir}: the floor does not apply v2 filters")
        codec = _codec_name(meta.get("compressor"))
        return [(f, [(0, f.stat().st_size)], codec) for f in chunk_files]
    codecs = meta["codecs"]
    if codecs[0]["name"] != "sharding_indexed":
        b2b = [c for c in codecs if c["name"] not in ("bytes", "transpose")]
        if len(b2b) > 1:
            raise RuntimeError(f"{adir}: the floor decodes one compressor, not {b2b}")
        codec = _codec_name(b2b[0] if b2b else None)
        return [(f, [(0, f.stat().st_size)], codec) for f in chunk_files]
    conf = codecs[0]["configuration"]
    b2b = [c for c in conf["codecs"] if c["name"] not in ("bytes", "transpose")]
    if len(b2b) > 1:
        raise RuntimeError(f"{adir}: the floor decodes one compressor, not {b2b}")
    codec = _codec_name(b2b[0] if b2b else None)
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    n_index = math.prod(s // c for s, c in zip(shard, conf["chunk_shape"]))
    has_crc = any(c["name"] == "crc32c" for c in conf["index_codecs"])
    index_bytes = 16 * n_index + (4 if has_crc else 0)
    at_end = conf.get("index_location", "end") == "end"
    out = []
    for f in chunk_files:
        blob = f.read_bytes()
        raw = blob[-index_bytes:] if at_end else blob[:index_bytes]
        index = np.frombuffer(raw[:16 * n_index], dtype="<u8").reshape(-1, 2)
        out.append((f, [(int(o), int(s)) for o, s in index if o != 2**64 - 1], codec))
    return out


# --------------------------------------------------------------------------- run


@dataclass
class Result:
    key: str
    label: str
    samples: list[float] = field(default_factory=list)  # open + load, seconds
    open_samples: list[float] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    pipeline: str | None = None

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples and not self.error else None

    @property
    def open_median(self) -> float | None:
        return float(np.median(self.open_samples)) if self.open_samples and not self.error else None


def _compare(got: Any, ref: Any) -> str | None:
    """None when `got` is identical to `ref` (xarray's assert_identical, plus dtypes and NumPy
    data, which assert_identical does not check)."""
    import xarray as xr

    try:
        xr.testing.assert_identical(got, ref)
    except AssertionError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return "MISMATCH: not identical to engine=\"zarr\"" + _where(got, ref) + ": " + " | ".join(lines[:4])
    for name, var in ref.variables.items():
        g = got.variables[name]
        if g.dtype != var.dtype:
            return f"MISMATCH: {name} is {g.dtype}, engine=\"zarr\" gives {var.dtype}"
        if not isinstance(g.data, np.ndarray):
            return f"MISMATCH: {name} holds {type(g.data).__name__}, not a NumPy array"
    return None


def _where(got: Any, ref: Any) -> str:
    """Which variable's values differ, how many elements, the first one."""
    for name, var in ref.variables.items():
        g = got.variables.get(name)
        if g is None or g.shape != var.shape or g.dtype != var.dtype:
            continue
        a, b = np.asarray(g.values), np.asarray(var.values)
        same = a == b
        if a.dtype.kind in "fc":
            same |= np.isnan(a) & np.isnan(b)
        if not same.all():
            first = tuple(int(i) for i in np.argwhere(~same)[0])
            return f" ({name}: {int((~same).sum())} element(s) differ, first at {first}: {a[first]} vs {b[first]})"
    return ""


def run_format(spec: XSpec, path: Path, rows: list[Row], repeats: int) -> dict:
    from .datasets import warm_page_cache

    from gpuzarr.zarr_pipeline import FALLBACKS  # reads gpuzarr's pipeline hands to zarr-python's

    warm_page_cache(path)
    fallbacks_before = dict(FALLBACKS)
    results = {r.key: Result(r.key, r.label) for r in rows}
    ref = None
    # warm-up = check; the reference (engine="zarr", default pipeline) first
    for row in sorted(rows, key=lambda r: r.key != "zarr"):
        res = results[row.key]
        needs = (row.pipeline or "").split(".")[0] or (row.engine if row.engine != "zarr" else "")
        if needs and importlib.util.find_spec(needs) is None:
            res.skipped = f"not installed: {needs}"
            continue
        try:
            with row.context(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = open_dataset(row, path)
                res.error = _pipeline_check(row, ds)  # before load(), while the zarr arrays are behind it
                arrays = _zarr_arrays(ds) if row.engine == "zarr" else []
                if arrays:
                    cls = type(arrays[0]._async_array.codec_pipeline)
                    res.pipeline = f"{cls.__module__}.{cls.__name__}"
                ds.load()
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            continue
        if res.error:
            continue
        if row.key == "zarr":
            ref = ds
        elif ref is not None:
            res.error = _compare(ds, ref)
        del ds
    cf = Result("cf", "xarray CF decoding alone (in memory)")
    cf_fn = None
    if ref is None:
        out_nbytes = None
        for res in results.values():
            if res.error is None and res.skipped is None:
                res.error = 'no reference: engine="zarr" with its default pipeline did not load'
        cf.error = "no reference"
    else:
        out_nbytes = int(ref.nbytes)
        try:
            cf_fn = _cf_decoding(path, ref)
        except Exception as exc:
            cf.error = f"{type(exc).__name__}: {exc}"
        del ref
    for res in results.values():
        if res.error:
            _log(f"  {spec.fmt} {res.label}: {res.error}")
    floor, floors = None, {}
    try:
        floor = Floor(path)
        floors = {"floor": Result("floor", f"floor: read + decompress, {floor.n_threads} threads"),
                  "floor:1t": Result("floor:1t", "floor: read + decompress, 1 thread")}
    except Exception as exc:
        floors = {"floor": Result("floor", "floor", error=f"{type(exc).__name__}: {exc}")}
    runners: list[tuple[Result, Callable[[], None]]] = []
    for row in rows:
        res = results[row.key]
        if res.error is None and res.skipped is None:
            runners.append((res, lambda row=row, res=res: _timed(row, path, res)))
    for res in floors.values():
        if res.error is None:
            fn = floor.timer(res.key)
            runners.append((res, lambda fn=fn, res=res: res.samples.append(_gc_off(fn))))
    if cf_fn is not None:
        runners.append((cf, lambda: cf.samples.append(_gc_off(cf_fn))))
    for k in range(repeats):
        shift = k % max(1, len(runners))
        for res, fn in runners[shift:] + runners[:shift]:
            if res.error is None:
                try:
                    fn()
                except Exception as exc:
                    res.error = f"{type(exc).__name__} while timing: {exc}"
    if floor is not None:
        floor.close()
    fallbacks = {k: v - fallbacks_before.get(k, 0) for k, v in FALLBACKS.items() if v != fallbacks_before.get(k, 0)}
    return {"format": spec.fmt, "describe": spec.describe(), "out_nbytes": out_nbytes,
            "floor_compressed_bytes": floor.compressed_bytes if floor else None,
            "floor_frames": floor.n_frames if floor else None,
            "floor_files": floor.n_files if floor else None, "floor_tasks": len(floor.tasks) if floor else None,
            "gpuzarr_pipeline_fallbacks": fallbacks,
            "rows": {k: _entry(r) for k, r in results.items()},
            "floors": {k: _entry(r) for k, r in floors.items()}, "cf_decoding": _entry(cf)}


def _cf_decoding(path: Path, ref: Any) -> Callable[[], float]:
    """A timer of xarray's CF decoding alone (masks, scale/offset, times) of the raw arrays, held
    in memory beforehand: `xr.decode_cf(raw).load()`, which must give engine="zarr"'s Dataset."""
    import xarray as xr

    with ROWS[0].context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = xr.open_dataset(path, engine="zarr", mask_and_scale=False, decode_times=False).load()
        xr.testing.assert_identical(xr.decode_cf(raw).load(), ref)

    def run() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            xr.decode_cf(raw).load()
            return time.perf_counter() - t0

    return run


def _gc_off(fn: Callable[[], float]) -> float:
    gc.collect()
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def _timed(row: Row, path: Path, res: Result) -> None:
    with row.context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
        gc.disable()
        try:
            ds, t_open, t_all = open_load(row, path)
        finally:
            gc.enable()
        del ds
    res.open_samples.append(t_open)
    res.samples.append(t_all)


def _cell(e: dict) -> str:
    if e.get("skipped"):
        return "skipped"
    if e.get("error"):
        return "ERR"
    return "-" if e.get("median_s") is None else f"{e['median_s']:.3f}"


def _entry(r: Result) -> dict:
    return {"label": r.label, "median_s": r.median, "open_median_s": r.open_median, "samples_s": r.samples,
            "open_samples_s": r.open_samples, "error": r.error, "skipped": r.skipped, "pipeline": r.pipeline}


# --------------------------------------------------------------------------- output


def derived(fmt_doc: dict) -> dict[str, dict]:
    """Per row and floor: MB/s of decoded output, time / engine="zarr"'s, time / the floor's."""
    base = fmt_doc["rows"].get("zarr", {}).get("median_s")
    live = [e["median_s"] for e in fmt_doc["floors"].values() if e.get("median_s") and not e.get("error")]
    floor = min(live) if live else None  # the tighter of the two
    nbytes = fmt_doc["out_nbytes"]
    out = {}
    for k, e in {**fmt_doc["rows"], **fmt_doc["floors"]}.items():
        m = e.get("median_s")
        out[k] = {"mb_s": nbytes / m / 1e6 if m and nbytes else None,
                  "vs_zarr": m / base if m and base else None,
                  "vs_floor": m / floor if m and floor else None}
    return out


def format_table(doc: dict) -> str:
    from .report import _grid

    head = ["format", "engine / pipeline", "median s", "open ms", "MB/s", "/ zarr", "/ floor"]
    rows, notes = [], []
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for fd in doc["formats"]:
        d = derived(fd)
        for k, e in {**fd["rows"], **fd["floors"]}.items():
            if e.get("skipped"):
                rows.append([fd["format"], e["label"], "skipped", "", "", "", ""])
                notes.append(f"  {fd['format']} {e['label']}: {e['skipped']}")
                continue
            if e.get("error"):
                rows.append([fd["format"], e["label"], "ERR", "", "", "", ""])
                notes.append(f"  {fd['format']} {e['label']}: {e['error']}")
                continue
            om = e.get("open_median_s")
            rows.append([fd["format"], e["label"], f(e["median_s"], ".3f"), "" if om is None else f"{om * 1e3:.1f}",
                         f(d[k]["mb_s"], ".0f"), f(d[k]["vs_zarr"], ".2f"), f(d[k]["vs_floor"], ".2f")])
        if fd.get("gpuzarr_pipeline_fallbacks"):
            notes.append(f"  {fd['format']}: reads gpuzarr.CodecPipeline handed to zarr-python's own pipeline: "
                         + ", ".join(f"{k} x{v}" for k, v in fd["gpuzarr_pipeline_fallbacks"].items()))
    text = _grid(head, rows)
    text += ("\n\nmedian s: xr.open_dataset(path, engine=...).load(), open included (open ms: the open alone); "
             "MB/s: decoded output (Dataset.nbytes after load) / median, floors too;\n"
             "/ zarr: time / engine=\"zarr\" with its default pipeline (<1: faster); / floor: time / the floor, the "
             "faster of its two rows (read every chunk/shard file whole from the page cache + decompress every "
             "frame;\nnot in it: metadata, CF decoding, output assembly)")
    cf_lines = []
    for fd in doc["formats"]:
        cf, d = fd.get("cf_decoding") or {}, derived(fd)
        floor = min((e["median_s"] for e in fd["floors"].values() if e.get("median_s") and not e.get("error")),
                    default=None)
        if cf.get("error"):
            notes.append(f"  {fd['format']} CF decoding: {cf['error']}")
        elif cf.get("median_s") and floor:
            both = floor + cf["median_s"]
            best = min((e["median_s"] for e in fd["rows"].values() if e.get("median_s")), default=None)
            cf_lines.append(f"  {fd['format']}: CF decoding alone {cf['median_s']:.3f} s; floor + CF decoding "
                            f"{both:.3f} s" + ("" if best is None else f" (fastest row / that: {best / both:.2f})"))
    if cf_lines:
        text += ("\n\nxarray's CF decoding (xr.decode_cf(raw).load() of the raw arrays held in memory: the int16 "
                 "variable to float64, masks, times), timed in the same rounds; every engine pays it, the floor "
                 "does not:\n" + "\n".join(cf_lines))
    if notes:
        text += "\n\nerrors and notes:\n" + "\n".join(notes)
    return text


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench --xarray",
                                description="xr.open_dataset(...).load() with engine=\"zarr\" (zarr-python's default "
                                            "pipeline, zarrs', gpuzarr's) and engine=\"gpuzarr\", against a "
                                            "read + decompress floor; v3 sharded zstd and v2 blosc.")
    p.add_argument("--quick", action="store_true", help="~32 MiB of decoded output instead of ~256 MiB")
    p.add_argument("--mib", type=float, default=None, help="decoded size of the dataset in MiB (default 256, --quick 32)")
    p.add_argument("--grid", default="512,512", help="LAT,LON points (default 512,512); time steps fill --mib")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--formats", default="v3,v2", help="v3 (sharded zstd), v2 (blosc-lz4): default both")
    p.add_argument("--rows", default=",".join(ROW_KEYS), help=f"subset of {','.join(ROW_KEYS)}")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    args = p.parse_args(argv)
    if args.mib is None:
        args.mib = 32.0 if args.quick else 256.0
    try:
        args.grid = tuple(int(v) for v in args.grid.split(","))
        assert len(args.grid) == 2 and min(args.grid) > 0
    except (ValueError, AssertionError):
        p.error("--grid must be LAT,LON")
    args.formats = [f for f in args.formats.split(",") if f]
    args.rows = [r for r in args.rows.split(",") if r]
    for what, got, allowed in (("format", args.formats, FORMATS), ("row", args.rows, ROW_KEYS)):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"unknown {what}(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    if "zarr" not in args.rows:
        args.rows.insert(0, "zarr")  # the reference every row is checked against
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.repeats < 5:
        _log(f"warning: --repeats {args.repeats}: shared/BENCHMARKS.md asks for medians of at least 5")
    return args


def main(argv: list[str] | None = None) -> int:
    from . import report

    args = parse_args(argv)
    rows = [r for r in ROWS if r.key in args.rows]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    vers = report.versions()
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("xarray", "pandas", "dask"):
        with contextlib.suppress(PackageNotFoundError):
            vers[pkg] = version(pkg)
    doc: dict = {"timestamp": stamp, "argv": sys.argv[1:] if argv is None else argv,
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": report.machine_info(), "versions": vers, "git": report.git_info(ROOT),
                 **report.run_started(), "datasets": {}, "formats": []}
    t_start = time.perf_counter()
    specs = [make_spec(fmt, args.mib, args.grid, args.seed) for fmt in args.formats]
    paths = {}
    for spec in specs:  # generation first: nothing is timed while a dataset is written
        paths[spec.fmt], info = ensure(spec, args.cache)
        doc["datasets"][spec.fmt] = {**info, "describe": spec.describe(), "key": spec.key}
    for spec in specs:
        _log(spec.describe())
        fd = run_format(spec, paths[spec.fmt], rows, args.repeats)
        doc["formats"].append(fd)
        _log("  " + "  ".join(f"{k} {_cell(e)}" for k, e in {**fd["rows"], **fd["floors"],
                                                           "cf": fd["cf_decoding"]}.items()))
    report.close_run(doc, t_start)
    for fd in doc["formats"]:
        fd["derived"] = derived(fd)
    print(f"xarray bench {stamp}  commit {report.commit_label(doc['git'])}  repeats {args.repeats}  "
          f"{doc['machine'].get('affinity')} cores  {report.machine_load(doc)}")
    for spec in specs:
        ds = doc["datasets"][spec.fmt]
        print(f"  {spec.fmt}: {spec.describe()}; stored {ds['stored_bytes'] / 2**20:.1f} MiB")
    print()
    print(format_table(doc))
    out = args.out / f"xarray-{stamp}.json"
    report.write_json(doc, out)
    print(f"\nwrote {out} ({doc['seconds']} s)")
    failed = [e for fd in doc["formats"] for e in fd["rows"].values() if e.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
