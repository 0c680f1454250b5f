"""python -m bench --layouts: gpuzarr against tensorstore on the array layouts users really have
and whose read speed against tensorstore we measured as very uneven (many small chunk files, gzip
and zlib, big-endian data with crc32c, Zarr v2 order "F", a transpose filter, blosc-zstd in shards,
1-D, no compressor). The main bench's datasets are all little-endian uint16 zstd or blosc-lz4; a
layout slow there would go unseen. See bench/README.md, "Layouts".

Each layout is written once with zarr-python into the cache (keyed by its parameters) from the
main bench's generator (`datasets.generate`: smooth structures + 4 bits of hashed noise, as
uint16) mapped onto the layout's dtype, and read back by zarr-python to be checked. Workloads:
`full`, `window` (16 windows of 300 per axis, the whole extent on shorter axes, at unaligned
offsets, each timed on its own), `batch` (64 such windows in one `read_many`: gpuzarr
`read_batch`, tensorstore every read issued then every future awaited), `stride` (every axis
stepped by 3). Readers come from bench/readers.py (default gpuzarr and tensorstore; zarrs-python
and zarr-python with `--readers`). The warm-up is the check: every result's digest must equal that
of zarr-python's own read of the same selection, else MISMATCH (never timed, exit status 1). Then
`--repeats` rounds, readers rotated each round (workloads.time_all); every sample goes to
bench/results/layouts-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .datasets import DatasetSpec, _fit, cache_key, cache_slot, generate
from .workloads import Outcome, Workload, _fmt_sel, _random_starts, _run_op, _window_sel, _window_shape, digest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GEN_VERSION = 1  # bump when the data or the layout written for a spec changes
WINDOW, WINDOWS, PATCHES, STEP = 300, 16, 64, 3
WORKLOADS = ("full", "window", "batch", "stride")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LayoutSpec(DatasetSpec):
    """A DatasetSpec (so bench.readers and bench.workloads take it as it is) with the encodings
    the main datasets never use. codec: zstd, gzip, zlib (v2), blosc-zstd or none."""

    endian: str = "little"
    order: str = "C"  # Zarr v2 only
    transpose: tuple[int, ...] | None = None
    crc32c: bool = False

    @property
    def key(self) -> str:
        return cache_key(f"layout-{self.name}", asdict(self), GEN_VERSION)

    def describe(self) -> str:
        base = super().describe().replace("none level 0", "no compressor")
        extra = [f"{self.endian} endian"] if self.endian != "little" else []
        extra += ["crc32c"] if self.crc32c else []
        extra += [f"order {self.order}"] if self.order != "C" else []
        extra += [f"transpose {self.transpose}"] if self.transpose else []
        return ", ".join([base, *extra])


def make_layouts(quick: bool = False) -> dict[str, LayoutSpec]:
    def spec(name: str, why: str, shape: tuple[int, ...], dtype: str, fmt: int, chunks: tuple[int, ...],
             codec: str, level: int = 0, shards: tuple[int, ...] | None = None, **extra) -> LayoutSpec:
        if quick:  # a quarter of each long side (not the 16 channels); shards shrink to fit
            shape = tuple(n // 4 if n >= 1024 else n for n in shape)
            shards = shards and tuple(_fit(s, n, c) for s, n, c in zip(shards, shape, chunks))
        window = tuple(min(WINDOW, n) for n in shape)
        return LayoutSpec(name, why, shape, dtype, fmt, chunks, shards, codec, level, window, **extra)

    specs = [
        spec("v3-small-chunks", "many small chunk files: per-file cost", (2048, 2048), "uint16", 3, (64, 64),
             "zstd", 3),
        spec("v3-gzip", "gzip: inflate", (2048, 2048), "int32", 3, (256, 256), "gzip", 5),
        spec("v2-zlib", "v2 zlib: inflate", (2048, 2048), "float32", 2, (256, 256), "zlib", 5),
        spec("v3-big-endian-crc32c", "byte swapping, checksums", (2048, 2048), "uint16", 3, (128, 128), "zstd", 3,
             (1024, 1024), endian="big", crc32c=True),
        spec("v2-order-F", "v2 Fortran-order chunks", (4096, 2048), "float32", 2, (512, 512), "zstd", 3, order="F"),
        spec("v3-transpose", "transpose filter, 16 channels last", (1024, 1024, 16), "uint8", 3, (128, 128, 16),
             "zstd", 3, transpose=(2, 0, 1)),
        spec("v3-blosc-zstd-sharded", "blosc frames in shards", (4096, 4096), "float32", 3, (128, 128),
             "blosc-zstd", 5, (1024, 1024)),
        spec("v3-big-chunks", "2 MiB chunks, small windows: zstd decodes blocks a window needs", (4096, 4096),
             "uint16", 3, (1024, 1024), "zstd", 3),
        spec("v2-blosc-big-chunks", "v2 blosc-lz4, 2 MiB chunks of 256 KiB blocks: a window decodes its blocks",
             (4096, 4096), "uint16", 2, (1024, 1024), "blosc-lz4", 5),
        spec("v3-1d", "1-D, small chunks", (4_000_000,), "float64", 3, (10_000,), "zstd", 1),
        spec("v3-uncompressed-sharded", "no codec: copies only", (4096, 4096), "uint16", 3, (128, 128), "none", 0,
             (1024, 1024)),
    ]
    return {s.name: s for s in specs}


# --------------------------------------------------------------------------- data


def values(spec: LayoutSpec) -> np.ndarray:
    """The whole array: datasets.generate's uint16 image (~100-3700, 4 noise bits) onto the dtype,
    so every dtype gets the same mix of background, structure and noise."""
    base = generate(replace(spec, dtype="uint16"), (0,) * len(spec.shape), spec.shape)
    dtype = np.dtype(spec.dtype)
    if dtype == np.uint8:
        return ((base >> 4) + (base & 3)).astype(dtype)  # keeps 2 of the noise bits
    if dtype.kind == "f":
        return (base / 64).astype(dtype)  # exact: 6 fractional bits
    if dtype == np.int32:
        return base.astype(dtype) * 100 - 50_000  # signed, wider than 16 bits
    return base.astype(dtype)


def _encoding(spec: LayoutSpec) -> dict:
    """zarr.create_array's codec arguments for the spec."""
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

    if spec.zarr_format == 2:
        v2 = {"zstd": lambda: numcodecs.Zstd(level=spec.level), "zlib": lambda: numcodecs.Zlib(level=spec.level),
              "blosc-lz4": lambda: numcodecs.Blosc("lz4", spec.level, shuffle=numcodecs.Blosc.SHUFFLE)}[spec.codec]
        return {"compressors": v2(), "filters": None, "order": spec.order}
    compressor = {"zstd": lambda: ZstdCodec(level=spec.level), "gzip": lambda: GzipCodec(level=spec.level),
                  "blosc-zstd": lambda: BloscCodec(cname="zstd", clevel=spec.level, shuffle="shuffle"),
                  "none": lambda: None}[spec.codec]()
    compressors = [c for c in (compressor, Crc32cCodec() if spec.crc32c else None) if c is not None]
    return {"compressors": compressors or None, "serializer": BytesCodec(endian=spec.endian),
            "filters": [TransposeCodec(order=spec.transpose)] if spec.transpose else None, "shards": spec.shards}


def ensure(spec: LayoutSpec, cache: Path) -> tuple[Path, dict]:
    """The layout's path in the cache, written and read back by zarr-python first if absent."""
    import zarr

    path, info, tmp = cache_slot(cache, spec.key)
    if info is not None:
        return path, info
    _log(f"generating {spec.name}: {spec.describe()} ({spec.nbytes / 2**20:.0f} MiB) -> {path}")
    t0 = time.perf_counter()
    data = values(spec)
    arr = zarr.create_array(store=str(tmp), shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks, fill_value=0,
                            zarr_format=spec.zarr_format, attributes={"bench": spec.key}, **_encoding(spec))
    arr[...] = data
    if not np.array_equal(zarr.open_array(str(tmp), mode="r")[...], data):
        raise RuntimeError(f"{tmp}: zarr-python reads back other values than it wrote")
    os.replace(tmp, path)
    files = [f for f in path.rglob("*") if f.is_file()]
    stored = sum(f.stat().st_size for f in files)
    info = {"spec": asdict(spec), "gen_version": GEN_VERSION, "path": str(path), "stored_bytes": stored,
            "files": len(files), "ratio": spec.nbytes / stored, "written_by": "zarr-python " + zarr.__version__,
            "seconds": round(time.perf_counter() - t0, 1)}
    (cache / f"{spec.key}.json").write_text(json.dumps(info, indent=2))
    _log(f"  {stored / 2**20:.1f} MiB stored in {len(files)} files, ratio {info['ratio']:.2f}, {info['seconds']} s")
    return path, info


# --------------------------------------------------------------------------- workloads


def make_workloads(spec: LayoutSpec, seed: int) -> dict[str, Workload]:
    itemsize = np.dtype(spec.dtype).itemsize
    rng = np.random.default_rng(seed)
    windows = [_window_sel(spec, s) for s in _random_starts(spec, rng, WINDOWS + PATCHES, unaligned=True)]
    win_nbytes = math.prod(_window_shape(spec)) * itemsize
    strided = tuple(slice(None, None, STEP) for _ in spec.shape)
    stride_nbytes = math.prod(-(-n // STEP) for n in spec.shape) * itemsize
    return {"full": Workload("full", spec, [tuple(slice(0, n) for n in spec.shape)], spec.nbytes, False, "read"),
            "window": Workload("window", spec, windows[:WINDOWS], win_nbytes, True, "window"),
            "batch": Workload("batch", spec, windows[WINDOWS:], win_nbytes, False, f"{PATCHES} windows"),
            "stride": Workload("stride", spec, [strided], stride_nbytes, False, "read")}


def check(readers: list, wl: Workload, want: list[str]) -> dict[str, Outcome]:
    """Warm-up = check: every reader's result digests, item by item, against zarr-python's (`want`)."""
    outcomes = {}
    for reader in readers:
        out = outcomes[reader.name] = Outcome(reader.name, error=getattr(reader, "open_error", None))
        if out.error:
            continue
        try:
            _, out.digests = _run_op(reader, wl, timed=False)
        except Exception as exc:  # a reader that fails is reported, the others go on
            out.error = f"{type(exc).__name__}: {exc}"
            continue
        bad = [i for i, w in enumerate(want) if i >= len(out.digests) or out.digests[i] != w]
        if bad:
            out.error = (f"MISMATCH: {len(bad)} of {len(want)} results differ from zarr-python's "
                         f"(first: item {bad[0]}, selection {_fmt_sel(wl.items[bad[0]])})")
            _log(f"  {wl.spec.name}/{wl.name}: {reader.name}: {out.error}")
    return outcomes


# --------------------------------------------------------------------------- output


def format_table(doc: dict) -> str:
    from .report import _cell, _grid

    readers = doc["args"]["readers"]
    head = ["layout", "workload", "one timed op", *(f"{r} ms" for r in readers), "gz/ts"]
    rows, notes = [], []
    for row in doc["results"]:
        ratio = row["ratio"]
        nbytes = row["op_nbytes"]
        what = f"{row['unit']}, " + (f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB")
        rows.append([row["layout"], row["workload"], what, *(_cell(row["readers"].get(r)) for r in readers),
                     "-" if ratio is None else f"{ratio:.2f}"])
        notes += [f"  {row['layout']}/{row['workload']} {r}: {e['error']}" for r, e in row["readers"].items()
                  if e["error"]]
    text = _grid(head, rows)
    text += (f"\n\nmedians of {doc['args']['repeats']} rounds; window: one window, median over windows x rounds; "
             "gz/ts: gpuzarr / tensorstore (<1: gpuzarr faster)")
    return text + ("\n\nerrors:\n" + "\n".join(notes) if notes else "")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .readers import READER_NAMES

    names = tuple(make_layouts())
    p = argparse.ArgumentParser(prog="python -m bench --layouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", nargs="*", metavar="NAME",
                   help=f"subset of {', '.join(names)} (space or comma separated; default: all)")
    p.add_argument("--quick", action="store_true", help="a quarter of each side (1-D: of the length), 3 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7, --quick 3)")
    p.add_argument("--readers", default="gpuzarr,tensorstore",
                   help=f"comma-separated subset of {','.join(READER_NAMES)} (default gpuzarr,tensorstore)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window positions (default 0)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where layouts are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    args.layouts = [v for item in args.layouts or [] for v in item.split(",") if v] or list(names)
    args.readers = [v for v in args.readers.split(",") if v]
    for what, got, allowed in (("layout", args.layouts, names), ("reader", args.readers, READER_NAMES)):
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            p.error(f"unknown {what}(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    args.readers = [r for r in READER_NAMES if r in args.readers]
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.repeats < 5 and not args.quick:
        _log(f"warning: --repeats {args.repeats}: shared/BENCHMARKS.md asks for medians of at least 5")
    return args


def run_layout(spec: LayoutSpec, path: Path, args: argparse.Namespace, doc: dict) -> None:
    """Every workload of one layout: zarr-python's reference digests, the check, the timed rounds."""
    import zarr

    from .datasets import warm_page_cache
    from .readers import open_readers
    from .workloads import time_all

    warm_page_cache(path)
    ref = zarr.open_array(str(path), mode="r")
    readers = open_readers(args.readers, "cpu", spec, path, doc["readers"])
    for wl in make_workloads(spec, args.seed).values():
        _log(f"  {spec.name}/{wl.describe()}")
        outcomes = check(readers, wl, [digest(ref[sel]) for sel in wl.items])
        time_all(readers, wl, outcomes, args.repeats)
        meds = {o.reader: o.median for o in outcomes.values()}
        gz, ts = meds.get("gpuzarr"), meds.get("tensorstore")
        doc["results"].append({
            "layout": spec.name, "workload": wl.name, "unit": wl.unit, "items": len(wl.items),
            "item_nbytes": wl.item_nbytes, "op_nbytes": wl.op_nbytes, "ratio": gz / ts if gz and ts else None,
            "readers": {o.reader: {"median_s": o.median, "samples": o.samples, "error": o.error,
                                   "checked": o.digests is not None and not (o.error or "").startswith("MISMATCH")}
                        for o in outcomes.values()}})


def main(argv: list[str] | None = None) -> int:
    from . import report

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    specs = [make_layouts(args.quick)[n] for n in args.layouts]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc: dict = {"timestamp": stamp, "argv": argv,
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": report.machine_info(), "versions": report.versions(), "git": report.git_info(ROOT),
                 **report.run_started(), "layouts": {}, "readers": {}, "results": []}
    t_start = time.perf_counter()
    paths = {}
    for spec in specs:  # generation first: nothing is timed while a layout is written
        paths[spec.name], info = ensure(spec, args.cache)
        doc["layouts"][spec.name] = {**info, "describe": spec.describe(), "why": spec.title, "key": spec.key}
    for spec in specs:
        _log(f"{spec.name}: {spec.describe()}")
        run_layout(spec, paths[spec.name], args, doc)
    report.close_run(doc, t_start)
    print(f"layouts bench {stamp}  commit {report.commit_label(doc['git'])}  "
          f"repeats {args.repeats}  {report.machine_load(doc)}")
    for name, ld in doc["layouts"].items():
        print(f"  {name}: {ld['describe']}; {ld['stored_bytes'] / 2**20:.1f} MiB in {ld['files']} files "
              f"(ratio {ld['ratio']:.2f}); {ld['why']}")
    print()
    print(format_table(doc))
    out = args.out / f"layouts-{stamp}.json"
    report.write_json(doc, out)
    print(f"\nwrote {out} ({doc['seconds']} s)")
    return 1 if any((e["error"] or "").startswith("MISMATCH") for row in doc["results"]
                    for e in row["readers"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
