"""python -m bench: gpuzarr against tensorstore, zarrs-python and zarr-python (with its default
pipeline and with gpuzarr's, `gpuzarr.CodecPipeline`), side by side in one process, following shared/BENCHMARKS.md's protocol. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .datasets import NAMES
    from .readers import READER_NAMES
    from .workloads import WORKLOADS

    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark gpuzarr against tensorstore, zarrs-python and zarr-python (its default codec "
                    "pipeline, and gpuzarr's as zarr-python+gpuzarr; all in one process, "
                    "readers alternating, warm page cache, results checked bit for bit before timing). Prints a "
                    "table; writes <out>/<timestamp>.json and .png.")
    p.add_argument("--device", choices=("cpu", "gpu", "auto", "gpu-host"), default="cpu",
                   help="gpuzarr's device (default cpu; the peers always run on the CPU); gpu exits non-zero, saying why, "
                        "when gpuzarr cannot use a GPU; auto: gpuzarr.open's default (the GPU, reads under 1 MiB "
                        "compressed decoded on the CPU and copied up; the CPU where no GPU is usable); gpu-host: the "
                        "GPU host half alone, device calls no-ops (bench/gpu_host.py, its own options)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where generated datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON and PNG go (default bench/results)")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help=f"subset of {', '.join(NAMES)} (space or comma separated; default: all, "
                        "or 3d with --scale zarr_benchmarks)")
    p.add_argument("--workloads", nargs="+", metavar="NAME",
                   help=f"subset of {', '.join(WORKLOADS)} (default: all, or full,scan with --scale zarr_benchmarks)")
    p.add_argument("--readers", nargs="+", metavar="NAME", help=f"subset of {', '.join(READER_NAMES)} (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per workload (default 5, --quick 3)")
    p.add_argument("--size-2d", type=int, default=None, help="edge of the 2-D image and the v2 image (default 4096)")
    p.add_argument("--size-3d", type=int, default=None, help="edge of the 3-D volume (default 512)")
    p.add_argument("--ml-shape", default=None, help="Z,Y,X of the ML patch stack (default 64,1024,1024)")
    p.add_argument("--scale", choices=("default", "zarr_benchmarks"), default="default",
                   help="zarr_benchmarks: the 3-D volume at 1024^3 uint16, shards 256^3, inner 64^3, zstd level 0 "
                        "(zarrs/zarr_benchmarks' 'compressed + sharded' layout)")
    p.add_argument("--windows", type=int, default=None, help="windows timed in the window workload (default 16)")
    p.add_argument("--evict-mb", type=int, default=0, metavar="MB",
                   help="window workload with cold CPU caches: MB MiB written before each window's timer starts "
                        "(as a loader's work between reads; 64 is twice this machine's L3); default 0, back to back")
    p.add_argument("--patches", type=int, default=None, help="patches in the batch workload (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of window and patch positions (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: 1024^2 images, 128^3 volume, 16x512x512 stack, 3 repeats, 8 windows, 64 patches "
                        "(explicit flags still win)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--no-host-cost", action="store_true", help="skip gpuzarr's host-cost-per-chunk measurement")
    p.add_argument("--scaling", action="store_true",
                   help="run the thread-scaling benchmark instead (bench/scaling.py: the CPU path at 1, 2, 4, ... "
                        "threads beside tensorstore at the same concurrency)")
    p.add_argument("--cold", action="store_true",
                   help="run the cold-read benchmark instead (bench/cold.py; page cache dropped, needs root)")
    p.add_argument("--xarray", action="store_true",
                   help="run the xarray benchmark instead (bench/xarray_bench.py; see python -m bench --xarray --help)")
    p.add_argument("--remote", action="store_true",
                   help="run the object-storage benchmark instead (bench/remote.py; see python -m bench --remote --help)")
    p.add_argument("--layouts", nargs="*", metavar="NAME",
                   help="run the layouts benchmark instead (bench/layouts.py: gzip, zlib, big endian, order F, "
                        "transpose, small chunks...; see python -m bench --layouts --help)")
    p.add_argument("--loader", action="store_true",
                   help="run the data-loader benchmark instead (bench/loader.py; see python -m bench --loader --help)")
    args = p.parse_args(argv)

    quick = args.quick
    zb = args.scale == "zarr_benchmarks"
    if args.repeats is None:
        args.repeats = 3 if quick else 5
    if args.size_2d is None:
        args.size_2d = 1024 if quick else 4096
    if args.size_3d is None:
        args.size_3d = 1024 if zb else (128 if quick else 512)
    if args.ml_shape is None:
        args.ml_shape = "16,512,512" if quick else "64,1024,1024"
    try:
        args.ml_shape = tuple(int(v) for v in args.ml_shape.split(","))
        assert len(args.ml_shape) == 3
    except (ValueError, AssertionError):
        p.error("--ml-shape must be Z,Y,X")
    if args.evict_mb < 0:
        p.error("--evict-mb must be 0 or more")
    if args.windows is None:
        args.windows = 8 if quick else 16
    if args.patches is None:
        args.patches = 64 if quick else 256
    args.datasets = _list(args.datasets) or (["3d"] if zb else list(NAMES))
    args.workloads = _list(args.workloads) or (["full", "scan"] if zb else list(WORKLOADS))
    args.readers = _list(args.readers) or list(READER_NAMES)
    for what, got, allowed in (("dataset", args.datasets, NAMES), ("workload", args.workloads, WORKLOADS),
                               ("reader", args.readers, READER_NAMES)):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"unknown {what}(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    args.readers = [r for r in READER_NAMES if r in args.readers]
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.repeats < 5 and not quick:
        _log(f"warning: --repeats {args.repeats}: shared/BENCHMARKS.md asks for medians of at least 5")
    return args


def check_device(device: str) -> str | None:
    """None when gpuzarr can use `device`, else why not."""
    try:
        from gpuzarr.devices import get_device

        get_device(device)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--loader" in argv:  # the data-loader benchmark
        from .loader import main as loader_main

        return loader_main([a for a in argv if a != "--loader"])
    if "--xarray" in argv:  # xr.open_dataset(...).load() per engine and codec pipeline
        from .xarray_bench import main as xarray_main

        return xarray_main([a for a in argv if a != "--xarray"])
    if any(a == "--layouts" or a.startswith("--layouts=") for a in argv):  # layouts other than the datasets'
        from .layouts import main as layouts_main

        return layouts_main(argv)  # its own --layouts NAME ... picks the subset
    if "--remote" in argv:  # object storage at cloud latency (a local S3 server adding latency per request)
        from .remote import main as remote_main

        return remote_main([a for a in argv if a != "--remote"])
    if "--scaling" in argv:  # the CPU path by thread count
        from .scaling import main as scaling_main

        return scaling_main([a for a in argv if a != "--scaling"])
    if "--cold" in argv:  # small random reads from a cold page cache
        from .cold import main as cold_main

        return cold_main([a for a in argv if a != "--cold"])
    device = [b for a, b in zip(argv, argv[1:]) if a == "--device"] + [a[9:] for a in argv if a.startswith("--device=")]
    if device == ["gpu-host"]:  # the GPU host half with no-op device calls
        from .gpu_host import main as gpu_host_main

        return gpu_host_main([a for a in argv if a not in ("--device", "gpu-host", "--device=gpu-host")])
    args = parse_args(argv)
    reason = check_device(args.device)
    if reason:
        print(f"bench: gpuzarr cannot use --device {args.device}: {reason}", file=sys.stderr)
        return 2

    from . import report
    from .datasets import Frames, ensure, make_specs, warm_page_cache
    from .floor import VARIANTS, Floor
    from .internals import host_cost
    from .readers import open_readers
    from .workloads import Outcome, check, make_workload, time_all

    stamp = time.strftime("%Y%m%d-%H%M%S")
    specs = make_specs(args.size_2d, args.size_3d, args.ml_shape,
                       level_3d=0 if args.scale == "zarr_benchmarks" else 3)
    doc: dict = {
        "timestamp": stamp, "argv": sys.argv[1:] if argv is None else argv,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": report.machine_info(), "versions": report.versions(), "git": report.git_info(ROOT),
        **report.run_started(), "datasets": {}, "readers": {}, "results": [], "memory": {},
    }
    t_start = time.perf_counter()
    # datasets first (generation is slow and must not interleave with timing)
    paths = {}
    for name in args.datasets:
        spec = specs[name]
        path, info = ensure(spec, args.cache)
        paths[name] = path
        doc["datasets"][name] = {**info, "describe": spec.describe(), "key": spec.key}

    for name in args.datasets:
        spec, path = specs[name], paths[name]
        _log(f"{name}: {spec.describe()}")
        warm_page_cache(path)
        readers = open_readers(args.readers, args.device, spec, path, doc["readers"])
        floor = None
        if spec.has_floor:
            frames = Frames(spec, path)
            doc["datasets"][name]["frames_bytes"] = frames.compressed_bytes
            floor = Floor(frames)
        for wname in args.workloads:
            wl = make_workload(wname, spec, args.windows, args.patches, args.seed, args.evict_mb)
            _log(f"  {name}/{wl.describe()}")
            outcomes = check(readers, wl, _log)
            extras = []
            floors: dict[str, Outcome] = {}
            if floor is not None:
                for variant in VARIANTS:
                    o = Outcome(f"floor:{variant}")
                    floors[o.reader] = o
                    try:
                        extras.append((o, floor.timer(wl, variant)))
                    except Exception as exc:
                        o.error = f"{type(exc).__name__}: {exc}"
            time_all(readers, wl, outcomes, args.repeats, extras)
            row = {"dataset": name, "workload": wname, "unit": wl.unit, "items": len(wl.items),
                   "item_nbytes": wl.item_nbytes, "op_nbytes": wl.op_nbytes,
                   "readers": {o.reader: _entry(o) for o in outcomes.values()},
                   "floors": {k: _entry(o) for k, o in floors.items()}}
            row["ratios"] = report.ratios(row)
            gz = next((r for r in readers if r.name == "gpuzarr"), None)
            if gz is not None and not args.no_host_cost and outcomes["gpuzarr"].error is None:
                row["host_cost"] = host_cost(gz.arr, wl, args.repeats)
            doc["results"].append(row)
            d = report.derived(row)
            meds = "  ".join(f"{k} {report._cell(v)}" for k, v in row["readers"].items())
            ratio = "-" if d["ratio"] is None else f"{d['ratio']:.2f}"
            _log(f"    {meds}  floor {report._ms(d['floor_s'])}  gz/ts {ratio}")
        if floor is not None:
            floor.close()
        if "full" in args.workloads and not args.no_memory:
            doc["memory"][name] = {}
            ok = {row["dataset"]: row for row in doc["results"] if row["workload"] == "full"}.get(name)
            for r in readers:
                if ok is None or ok["readers"].get(r.name, {}).get("error"):
                    continue
                doc["memory"][name][r.name] = _memprobe(r.name, path, spec.zarr_format, args.device)
        del readers
    if "zarr-python+gpuzarr" in args.readers:
        from gpuzarr.zarr_pipeline import FALLBACKS

        doc["gpuzarr_pipeline_fallbacks"] = dict(FALLBACKS)  # in this process (memory probes run apart)
    report.close_run(doc, t_start)

    table = report.format_table(doc)
    print(f"gpuzarr bench {stamp}  commit {doc['git'].get('commit', '?')[:10]}"
          f"{' (dirty: ' + ', '.join(doc['git']['modified']) + ')' if doc['git'].get('dirty') else ''}  "
          f"device {args.device}  repeats {args.repeats}  {report.machine_load(doc)}")
    for name in args.datasets:
        ds = doc["datasets"][name]
        print(f"  {name}: {ds['describe']}; stored {ds['stored_bytes'] / 2**20:.1f} MiB (ratio {ds['ratio']:.2f})")
    print()
    print(table)
    out_json = args.out / f"{stamp}.json"
    out_png = args.out / f"{stamp}.png"
    report.write_json(doc, out_json)
    report.plot(doc, out_png)
    print(f"\nwrote {_rel(out_json)} and {_rel(out_png)} ({doc['seconds']} s)")
    failed = [f"{row['dataset']}/{row['workload']}/{k}" for row in doc["results"]
              for k, v in row["readers"].items() if (v.get("error") or "").startswith("MISMATCH")]
    return 1 if failed else 0


def _entry(o) -> dict:
    return {"median_s": o.median, "samples": o.samples, "error": o.error}


def _memprobe(reader: str, path: Path, zarr_format: int, device: str) -> dict:
    cmd = [sys.executable, "-m", "bench.memprobe", reader, str(path), str(zarr_format), device]
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            return {"error": (res.stderr.strip().splitlines() or ["exit " + str(res.returncode)])[-1]}
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
