"""Peak memory of one full read, measured in a fresh process (so earlier reads, freed arenas
and other readers' caches do not blur it):

  rss_peak_delta      peak resident set size during the read minus the RSS just before it,
                      from psutil, sampled every 0.5 ms in a background thread (primary figure)
  maxrss_delta        the kernel's own high-water mark (VmHWM, reset through /proc/self/clear_refs
                      just before the read) after the read minus the RSS before it: exact, no
                      sampling gaps; null where the kernel does not allow the reset (a process'
                      ru_maxrss starts at its parent's, so it cannot stand in)
  tracemalloc_peak    peak of traced Python/NumPy allocations during a second read (NumPy reports
                      its buffers to tracemalloc; memory libraries allocate in C is not seen)

Before the measured read the process opens the array and reads one small window, so thread
pools exist and lazy imports are done. Usage (the harness runs this itself):
  python -m bench.memprobe READER PATH ZARR_FORMAT DEVICE
prints one JSON object.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
import tracemalloc


def main(argv: list[str]) -> int:
    import psutil

    from .readers import make_readers

    name, path, zarr_format, device = argv[0], argv[1], int(argv[2]), argv[3]
    (reader,) = make_readers([name], device)

    class Spec:  # only what readers look at
        pass

    spec = Spec()
    spec.zarr_format = zarr_format
    with reader.context():
        reader.open(spec, path)
        shape = _shape(reader)
        small = tuple(slice(0, min(8, n)) for n in shape)
        reader.sync(reader.read(small))
    full = tuple(slice(0, n) for n in shape)
    proc = psutil.Process()
    gc.collect()
    hwm_reset = _reset_hwm()
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = proc.memory_info().rss
            if rss > peak[0]:
                peak[0] = rss
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with reader.context():
        out = reader.read(full)
        reader.sync(out)
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    hwm = _hwm() if hwm_reset else None
    out_nbytes = int(reader.to_host(out).nbytes)
    del out
    gc.collect()
    tracemalloc.start()
    with reader.context():
        out = reader.read(full)
        reader.sync(out)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    extra = {}
    if name == "gpuzarr":
        extra["batch_bytes"] = reader.arr._reader.settings.batch_bytes or reader.arr._device.batch_bytes
    print(json.dumps({"reader": name, "out_nbytes": out_nbytes, "rss_before": before,
                      "rss_peak_delta": peak[0] - before,
                      "maxrss_delta": None if hwm is None else hwm - before,
                      "tracemalloc_peak": traced_peak, "read_seconds": seconds, **extra}))
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm() is not None
    except OSError:
        return False


def _hwm() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _shape(reader) -> tuple[int, ...]:
    for attr in ("arr", "store"):
        obj = getattr(reader, attr, None)
        if obj is not None:
            return tuple(int(n) for n in obj.shape)
    raise RuntimeError("reader has no shape")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
