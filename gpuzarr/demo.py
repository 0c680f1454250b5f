"""`gpuzarr demo`: write a sharded zstd array, read it back on the best device, verify, time."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from .api import open as open_array
from .devices.base import get_device
from .sample import sample_data, write_sharded


def _progress(label: str):
    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r  {label}: {done}/{total}", end=end, file=sys.stderr, flush=True)
    return show


def _room_for(size: int) -> str | None:
    """Why an image of this side does not fit here (the demo holds it three times in memory,
    and once compressed on disk), or None."""
    image = size * size * 2
    memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if memory is not None and 3 * image > memory:
        return f"--size {size} needs {3 * image / 2**30:.3g} GiB of memory; {memory / 2**30:.1f} GiB are free"
    disk = shutil.disk_usage(tempfile.gettempdir()).free
    if image > disk:
        return f"--size {size} needs up to {image / 2**30:.3g} GiB in {tempfile.gettempdir()}; {disk / 2**30:.1f} GiB are free"
    return None


def run(size: int = 4096, repeats: int = 5, device: str = "auto") -> int:
    shape, shard, chunk = (size, size), (1024, 1024), (128, 128)
    why = _room_for(size)
    if why is not None:
        print(f"gpuzarr demo: error: {why}", file=sys.stderr)
        return 2
    dev = get_device(device)
    print(f"gpuzarr demo: {shape} uint16, shards {shard}, inner chunks {chunk}, zstd level 3")
    data = sample_data(shape)
    with tempfile.TemporaryDirectory(prefix="gpuzarr-demo-") as tmp:
        path = f"{tmp}/image.zarr"
        write_sharded(path, data, shard, chunk, progress=_progress("writing shards"))
        arr = open_array(path, device=dev)
        print(f"  opened {arr}")
        result = arr[...]
        cpu = result if dev.name == "cpu" else open_array(path, device="cpu")[...]
        host = result if dev.name == "cpu" else dev.xp.asnumpy(result)
        if not np.array_equal(host, data):
            print("FAILED: the array read back differs from the data written", file=sys.stderr)
            return 1
        if dev.name != "cpu" and not np.array_equal(host, cpu):
            print("FAILED: the GPU read differs from the CPU read", file=sys.stderr)
            return 1
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            arr.read(..., out=result)
            times.append(time.perf_counter() - start)
            _progress("timed full reads")(i + 1, repeats)
        window = arr[size // 3: size // 3 + 256, size // 5: size // 5 + 256]
        assert np.array_equal(window if dev.name == "cpu" else dev.xp.asnumpy(window),
                              data[size // 3: size // 3 + 256, size // 5: size // 5 + 256])
    best = statistics.median(times)
    print(f"  verified: read on {dev.name} is bit-identical to the source"
          + (" and to the CPU path" if dev.name != "cpu" else ""))
    print(f"  full read: {best * 1e3:.1f} ms median of {repeats}, "
          f"{data.nbytes / best / 1e9:.2f} GB/s decoded")
    return 0
