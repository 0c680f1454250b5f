"""python -m bench --scaling: the CPU path by thread count, beside tensorstore at the same
concurrency. gpuzarr with Settings(threads=t), tensorstore with data_copy_concurrency and
file_io_concurrency limited to t; a full read and a batch of random patches of each dataset,
page cache warm, medians of --repeats after one warm-up read. Where the ratio grows with t,
some part of gpuzarr's read does not spread over more cores as tensorstore's does."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .datasets import ensure, make_specs

HERE = Path(__file__).resolve().parent


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _patches(shape: tuple, edge: int, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, np.array(shape) - edge, (n, len(shape)))
    return [tuple(slice(int(s), int(s) + edge) for s in row) for row in starts]


def measure(path: Path, threads: int, patches: list, repeats: int) -> dict[str, float]:
    """Milliseconds of each reader's full read and patch batch at `threads`."""
    import tensorstore as ts

    import gpuzarr

    gz = gpuzarr.open(str(path), device="cpu", settings=gpuzarr.Settings(threads=threads))
    context = ts.Context({"data_copy_concurrency": {"limit": threads}, "file_io_concurrency": {"limit": threads}})
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, context=context).result()

    def ts_batch() -> list:
        with ts.Batch() as batch:
            futures = [store[p].read(batch=batch) for p in patches]
        return [f.result() for f in futures]

    if not np.array_equal(gz[...], store.read().result()):  # the protocol: checked before timed
        raise SystemExit(f"bench --scaling: gpuzarr and tensorstore read {path} differently")
    return {"gz full": _median_ms(lambda: gz[...], repeats),
            "ts full": _median_ms(lambda: store.read().result(), repeats),
            "gz batch": _median_ms(lambda: gz.read_batch(patches), repeats),
            "ts batch": _median_ms(ts_batch, repeats)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(prog="python -m bench --scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--datasets", default="2d,3d", help="subset of 2d,3d (comma separated; default both)")
    p.add_argument("--size-2d", type=int, default=4096, help="edge of the 2-D image (default 4096)")
    p.add_argument("--size-3d", type=int, default=512, help="edge of the 3-D volume (default 512)")
    p.add_argument("--threads", default=",".join(str(t) for t in (1, 2, 4, 8, 16, 32) if t <= cores),
                   help=f"thread counts (comma separated; default powers of 2 up to the {cores} cores here)")
    p.add_argument("--patches", type=int, default=64, help="random patches of the batch workload (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed reads per point (default 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads {args.threads!r}: expected comma-separated integers")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not args.threads or min(args.threads) < 1 or args.patches < 1 or args.repeats < 1:
        p.error("--threads, --patches and --repeats must be >= 1")
    if args.size_2d < 512 or args.size_3d < 128:
        p.error("--size-2d must be >= 512 and --size-3d >= 128 (a patch is 256^2 or 64^3)")
    if not set(args.datasets) <= {"2d", "3d"}:
        p.error(f"--datasets {args.datasets}: a subset of 2d,3d")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = make_specs(args.size_2d, args.size_3d)
    rows = []
    print(f"{'set':4s} {'threads':>7s} {'gz full':>9s} {'ts full':>9s} {'gz/ts':>6s} {'gz batch':>9s} {'ts batch':>9s} "
          f"{'gz/ts':>6s}   (ms, medians of {args.repeats}; batch: {args.patches} patches)")
    for name in args.datasets:
        spec = specs[name]
        path, _ = ensure(spec, args.cache)
        patches = _patches(spec.shape, spec.window[0], args.patches, args.seed)
        for t in args.threads:
            got = measure(path, t, patches, args.repeats)
            rows.append({"dataset": name, "threads": t, **got})
            full, batch = got["gz full"] / got["ts full"], got["gz batch"] / got["ts batch"]
            print(f"{name:4s} {t:7d} {got['gz full']:9.1f} {got['ts full']:9.1f} {full:6.2f} "
                  f"{got['gz batch']:9.1f} {got['ts batch']:9.1f} {batch:6.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"datasets": {n: specs[n].describe() for n in args.datasets}, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
