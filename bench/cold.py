"""python -m bench --cold: small random reads from a cold page cache, the case where a disk's queue
depth decides. 64 random windows of the 2-D dataset, read one by one and as one batch
(gpuzarr's read_batch, tensorstore's ts.Batch), with the page cache dropped before every timed
read (needs root: otherwise it says so and measures nothing) and gpuzarr's shard-index cache
empty (tensorstore runs with its cache pool at 0). The floor is the disk itself: fio's random
16 KiB O_DIRECT reads of the same shard files at queue depth 1 and 32, where fio is installed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import ensure, make_specs

HERE = Path(__file__).resolve().parent
DROP = "/proc/sys/vm/drop_caches"


def can_drop() -> str | None:
    """None when the page cache can be dropped here, else why not."""
    if not os.path.exists(DROP):
        return f"{DROP} does not exist (not Linux)"
    if not os.access(DROP, os.W_OK):
        return f"{DROP} is not writable (run as root)"
    return None


def drop_page_cache() -> None:
    os.sync()
    with open(DROP, "w") as f:
        f.write("1\n")


def fio_floor(files: list[Path], seconds: float = 2.0) -> dict | None:
    """IOPS of random 16 KiB O_DIRECT reads over `files` at queue depth 1 and 32 (None: no fio)."""
    if shutil.which("fio") is None:
        return None
    out = {}
    for depth, engine in ((1, "psync"), (32, "libaio")):
        cmd = ["fio", "--name=floor", "--rw=randread", "--bs=16k", "--direct=1", f"--iodepth={depth}",
               f"--ioengine={engine}", f"--runtime={seconds}", "--time_based", "--output-format=json",
               "--filename=" + ":".join(str(f) for f in files)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            return {"error": result.stderr.strip()[:200]}
        out[f"qd{depth}_iops"] = json.loads(result.stdout)["jobs"][0]["read"]["iops"]
    return out


def _windows(shape: tuple, n: int, seed: int, size: int = 256) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(slice(y, y + size), slice(x, x + size)) for y, x in rng.integers(0, np.array(shape) - size, (n, 2))]


def _readers(path: Path) -> dict[str, dict[str, Any]]:
    import tensorstore as ts

    import gpuzarr

    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "context": {"cache_pool": {"total_bytes_limit": 0}}}).result()

    def ts_batch(wins: list) -> list:
        with ts.Batch() as batch:
            futures = [store[w].read(batch=batch) for w in wins]
        return [f.result() for f in futures]

    def gz() -> Any:
        return gpuzarr.open(str(path), device="cpu")  # a new array: an empty shard-index cache

    return {
        "gpuzarr": {"open": gz, "one": lambda a, wins: [a[w] for w in wins], "batch": lambda a, wins: a.read_batch(wins)},
        "tensorstore": {"open": lambda: store, "one": lambda s, wins: [s[w].read().result() for w in wins],
                        "batch": lambda s, wins: ts_batch(wins)},
    }


def disk_bytes(path: Path) -> int | None:
    """Bytes read so far from the block device holding `path` (/proc/diskstats; None where it
    cannot be told): what a cold read really asked of the disk, readahead included."""
    dev = os.stat(path).st_dev
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if (int(fields[0]), int(fields[1])) == (os.major(dev), os.minor(dev)):
                    return int(fields[5]) * 512  # sectors read
    except OSError:
        pass
    return None


def measure(path: Path, windows: list, repeats: int) -> tuple[dict, dict]:
    """Seconds and bytes read from the disk (None: unknown) per reader and workload, per round."""
    readers = _readers(path)
    times: dict = {name: {"one": [], "batch": []} for name in readers}
    disk: dict = {name: {"one": [], "batch": []} for name in readers}
    for _ in range(repeats):
        for workload in ("one", "batch"):
            for name, reader in readers.items():
                handle = reader["open"]()
                drop_page_cache()
                before = disk_bytes(path)
                start = time.perf_counter()
                reader[workload](handle, windows)
                times[name][workload].append(time.perf_counter() - start)
                after = disk_bytes(path)
                disk[name][workload].append(None if before is None or after is None else after - before)
    return times, disk


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench --cold", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--size-2d", type=int, default=4096, help="edge of the 2-D image (default 4096)")
    p.add_argument("--windows", type=int, default=64, help="random 256x256 windows (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.windows < 1 or args.repeats < 1 or args.size_2d < 512:
        p.error("--windows and --repeats must be >= 1, --size-2d >= 512")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = can_drop()
    if why:
        print(f"bench --cold: cannot drop the page cache: {why}; nothing measured", file=sys.stderr)
        return 2
    spec = make_specs(args.size_2d)["2d"]
    path, _ = ensure(spec, args.cache)
    windows = _windows(spec.shape, args.windows, args.seed)
    times, disk = measure(path, windows, args.repeats)
    floor = fio_floor(sorted(p for p in (path / "c").rglob("*") if p.is_file()))
    med = {name: {w: float(np.median(v)) for w, v in work.items()} for name, work in times.items()}
    print(f"cold reads: {spec.describe()}; {args.windows} random 256x256 windows; page cache dropped before each "
          f"timed read; medians of {args.repeats} rounds, ms")
    print(f"{'workload':10s} {'gpuzarr':>9s} {'tensorstore':>12s} {'gz/ts':>6s}   MB from the disk (gz / ts)")
    for workload in ("one", "batch"):
        g, t = med["gpuzarr"][workload], med["tensorstore"][workload]
        mb = [np.median(disk[name][workload]) / 1e6 if None not in disk[name][workload] else float("nan")
              for name in ("gpuzarr", "tensorstore")]
        print(f"{'one by one' if workload == 'one' else 'one batch':10s} {g * 1e3:9.1f} {t * 1e3:12.1f} {g / t:6.2f}"
              f"   {mb[0]:.1f} / {mb[1]:.1f}")
    if floor is None:
        print("disk floor: fio is not installed (apt-get install fio): no floor measured")
    elif "error" in floor:
        print(f"disk floor: fio failed: {floor['error']}")
    else:
        print(f"disk floor (fio, random 16 KiB O_DIRECT reads of the shard files): queue depth 1 "
              f"{floor['qd1_iops']:.0f} IOPS ({1e6 / floor['qd1_iops']:.0f} us a read), depth 32 {floor['qd32_iops']:.0f} IOPS")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"cold-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"spec": spec.describe(), "windows": args.windows, "seconds": times,
                               "disk_bytes": disk, "fio": floor}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
