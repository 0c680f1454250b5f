"""python -m bench --device gpu-host: how fast gpuzarr's host half can feed a GPU, measured on a
machine without one. The real GpuDevice orchestration runs (plan, locate, fetch into the
device's staging, the batch layout: framing checks, stream tables, scatter records) with every
device call a no-op (NO DATA IS DECODED: labelled so in the output). Its compressed-byte rate is
set against an I/O floor measured in the same rounds: one os.preadv per chunk or shard file of
the dataset into a reused buffer (page cache warm). Reported per dataset and workload (a full
read, read_batch of random patches): milliseconds (and the reading thread's CPU milliseconds),
host GB/s, floor GB/s, their ratio, us per chunk, the same read with its ranges copied by one
thread (the store's split reads off: what one read gains from a second core), the speed-up of
two threads (kept for the run, as a loader's) reading at once over one, the microseconds per chunk the read holds the GIL at most
(its CPU time outside os.preadv: bench/gil.py) and the GB/s that this bounds the host half to on
any number of cores, and the bytes the layouts copied into a staging buffer of their own (0
where every batch is uploaded as fetched)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetSpec, ensure, make_specs, warm_page_cache
from .gil import gil_seconds

HERE = Path(__file__).resolve().parent


class NoopEngine:
    """GpuDevice's engine with every device call doing nothing: uploads, nvCOMP, kernels."""

    xp = np
    sm_count = 132  # an H100's: batches get the floor of chunks such a GPU would

    def __init__(self) -> None:
        self._local = threading.local()

    def empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)  # never touched: costs no page faults

    def host_ring(self) -> Any:
        """The calling thread's ring of two reused buffers, as the pinned ring is."""
        ring = getattr(self._local, "ring", None)
        if ring is None:
            ring = self._local.ring = [np.empty(0, np.uint8), np.empty(0, np.uint8), 0]

        def take(nbytes: int) -> tuple[np.ndarray, None]:
            k = ring[2]
            ring[2] = 1 - k
            if ring[k].size < nbytes:
                ring[k] = np.empty(nbytes, np.uint8)
            return ring[k][:nbytes], None
        return take

    def upload(self, host: np.ndarray, token: Any) -> np.ndarray:
        return host

    def decompress(self, *args: Any) -> None:
        pass

    def checksum(self, *args: Any) -> None:
        pass

    def copy(self, *args: Any) -> None:
        pass

    def unshuffle(self, *args: Any) -> None:
        pass

    def scatter(self, *args: Any) -> None:
        pass

    def fill(self, *args: Any) -> None:
        pass

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


def _specs(size: int, size_3d: int) -> list[DatasetSpec]:
    base = make_specs(size, size_3d)
    two_d = [replace(base["2d"], name=f"2d-{c}", chunks=(c, c)) for c in (64, 128, 256)]
    return [*two_d, base["3d"], base["v2"]]


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith((".z", "zarr.json")))


def io_floor(files: list[Path], buffer: np.ndarray) -> tuple[float, int]:
    """Seconds and bytes to read every file with one os.preadv each into one reused buffer."""
    total = 0
    t0 = time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            total += os.preadv(fd, [memoryview(buffer)[:os.fstat(fd).st_size]], 0)
        finally:
            os.close(fd)
    return time.perf_counter() - t0, total


def _patches(spec: DatasetSpec, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    window = [w or 1 for w in spec.window]
    starts = rng.integers(0, np.array(spec.shape) - np.array(window) + 1, size=(n, len(spec.shape)))
    return [tuple(slice(a, a + w) for a, w in zip(row, window)) for row in starts.tolist()]


def _chunk_bytes(arr: Any, windows: list) -> tuple[int, int]:
    """(compressed bytes, chunks) a read of these windows fetches: from the shard indexes."""
    from gpuzarr.plan import make_plan
    from gpuzarr.selection import normalize

    reader = arr._reader
    plan = make_plan([normalize(w, arr.shape) for w in windows], reader.locator.leaf_shape, len(windows) > 1)
    loc = reader.locator.locate(plan.chunks)
    sizes = np.where(loc.sizes >= 0, loc.sizes, 0)
    if (loc.sizes < 0).any():  # whole chunk files
        sizes = np.array([os.path.getsize(reader.store.path(k)) if os.path.exists(reader.store.path(k)) else 0
                          for k in loc.keys.tolist()])
    return int(sizes[loc.present].sum()), plan.n_chunks


def restaged_bytes(op: Any) -> int:
    """Bytes the batch layouts of one run of `op` copied into a staging buffer of their own
    rather than uploading the fetched one (streams nvCOMP cannot read where fetch put them,
    bytes decoded on the host)."""
    import gpuzarr.devices.gpu as gpu

    real, copied = gpu.build_layout, []

    def spy(batch: Any, *args: Any, **kw: Any) -> Any:
        layout = real(batch, *args, **kw)
        copied.append(0 if layout.staging is batch.staging else layout.staging.nbytes)
        return layout

    gpu.build_layout = spy
    try:
        op()
    finally:
        gpu.build_layout = real
    return sum(copied)


@contextlib.contextmanager
def one_reader() -> Any:
    """Reads inside it copy their ranges on one thread (gpuzarr.store's split reads off): what
    the store's parallel reads gain, timed in the same rounds."""
    import gpuzarr.store as store

    kept = store.SPLIT_BYTES
    store.SPLIT_BYTES = 1 << 62
    try:
        yield
    finally:
        store.SPLIT_BYTES = kept


class _Pair:
    """Two threads kept for the whole run, each making one read per round at once: the same
    threads every round, as a loader's, so their staging rings are warm (threads started per
    round allocated and faulted in fresh rings: 2d-64 "2 threads" 0.46x, 0.8-0.96x kept)."""

    def __init__(self) -> None:
        self._start, self._done = threading.Barrier(3), threading.Barrier(3)
        self._op: Any = None
        self._error: BaseException | None = None
        for _ in range(2):
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._start.wait()
            try:
                self._op()
            except BaseException as exc:  # raised by run(), not lost with this thread
                self._error = exc
            self._done.wait()

    def run(self, op: Any) -> float:
        """Seconds from releasing both threads to both having read once."""
        self._op, self._error = op, None
        t0 = time.perf_counter()
        self._start.wait()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return time.perf_counter() - t0


def measure(spec: DatasetSpec, path: Path, repeats: int, patches: int, seed: int) -> list[dict]:
    import gpuzarr
    from gpuzarr.devices.gpu import GpuDevice

    arr = gpuzarr.open(str(path), device=GpuDevice(NoopEngine()))
    wins = _patches(spec, patches, seed)
    work = {"full": (lambda: arr.read(), [tuple(slice(None) for _ in spec.shape)]),
            f"batch {patches}": (lambda: arr.read_batch(wins), wins)}
    files = _files(path)
    buffer = np.empty(max(f.stat().st_size for f in files), np.uint8)
    times: dict[str, list] = {name: [] for name in work}
    cpu: dict[str, list] = {name: [] for name in work}  # the reading thread's CPU time: steadier on a shared machine
    pairs: dict[str, list] = {name: [] for name in work}
    single: dict[str, list] = {name: [] for name in work}  # the same read with its ranges read by one thread
    floors = []
    pair = _Pair()
    for name, (op, _) in work.items():
        op()  # warm: index cache, pools, buffers
        pair.run(op)  # and the pair's threads' staging rings
    for _ in range(repeats):
        seconds, nbytes = io_floor(files, buffer)
        floors.append(nbytes / seconds)
        for name, (op, _) in work.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            op()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
            with one_reader():
                t0 = time.perf_counter()
                op()
                single[name].append(time.perf_counter() - t0)
            pairs[name].append(pair.run(op))
    floor = float(np.median(floors))
    held = {name: [gil_seconds(op)[1] for _ in range(max(3, repeats // 2))] for name, (op, _) in work.items()}
    rows = []
    for name, (op, windows) in work.items():
        nbytes, chunks = _chunk_bytes(arr, windows)
        t = float(np.median(times[name]))
        gil = float(np.median(held[name]))
        rows.append({"dataset": spec.name, "describe": spec.describe(), "workload": name, "ms": t * 1e3,
                     "cpu_ms": float(np.median(cpu[name])) * 1e3,
                     "host_gbs": nbytes / t / 1e9, "floor_gbs": floor / 1e9, "ratio": nbytes / t / floor,
                     "us_per_chunk": t / chunks * 1e6, "chunks": chunks, "compressed_bytes": nbytes,
                     "two_thread_speedup": 2 * t / float(np.median(pairs[name])), "restaged_bytes": restaged_bytes(op),
                     "one_reader_ms": float(np.median(single[name])) * 1e3,
                     "readers_speedup": float(np.median(single[name])) / t,
                     "gil_us_per_chunk": gil / chunks * 1e6, "gil_bound_gbs": nbytes / gil / 1e9 if gil > 0 else None,
                     "samples": {"one": times[name], "one_cpu": cpu[name], "two_at_once": pairs[name],
                                 "one_reader": single[name],
                                 "floor_bytes_per_s": floors, "gil_s": held[name]}})
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench --device gpu-host",
                                description="gpuzarr's GPU host half with no-op device calls, against an I/O floor.")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--size-2d", type=int, default=4096, help="edge of the 2-D images (default 4096)")
    p.add_argument("--size-3d", type=int, default=512, help="edge of the 3-D volume (default 512)")
    p.add_argument("--datasets", default=None, help="subset of 2d-64,2d-128,2d-256,3d,v2 (comma separated)")
    p.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    p.add_argument("--patches", type=int, default=256, help="patches of the batch workload (default 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.patches < 1 or args.size_2d < 256 or args.size_3d < 64:
        p.error("--repeats and --patches must be >= 1, --size-2d >= 256, --size-3d >= 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = _specs(args.size_2d, args.size_3d)
    if args.datasets:
        wanted = set(args.datasets.split(","))
        specs = [s for s in specs if s.name in wanted]
        if not specs:
            print(f"bench: no dataset named {args.datasets}", file=sys.stderr)
            return 2
    rows = []
    print("gpu-host: gpuzarr's GpuDevice with every device call a no-op (NOTHING IS DECODED): the host half "
          "alone, against reading the dataset's files (one preadv each); medians of "
          f"{args.repeats} rounds, {os.cpu_count()} cores")
    print(f"{'dataset':8s} {'workload':10s} {'ms':>8s} {'cpu ms':>7s} {'host GB/s':>10s} {'floor GB/s':>11s} {'ratio':>6s} "
          f"{'us/chunk':>9s} {'1 reader ms':>12s} {'2 threads':>10s} {'GIL us/chunk':>13s} {'GIL bound GB/s':>15s} "
          f"{'restaged MB':>12s}")
    for spec in specs:
        path, _ = ensure(spec, args.cache)
        warm_page_cache(path)
        for row in measure(spec, path, args.repeats, args.patches, args.seed):
            rows.append(row)
            print(f"{row['dataset']:8s} {row['workload']:10s} {row['ms']:8.2f} {row['cpu_ms']:7.2f} "
                  f"{row['host_gbs']:10.2f} {row['floor_gbs']:11.2f} {row['ratio']:6.2f} {row['us_per_chunk']:9.2f} "
                  f"{row['one_reader_ms']:12.2f} {row['two_thread_speedup']:9.2f}x {row['gil_us_per_chunk']:13.2f} "
                  f"{row['gil_bound_gbs'] or float('inf'):15.2f} {row['restaged_bytes'] / 1e6:12.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"gpu-host-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"note": "device calls are no-ops; nothing is decoded", "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
