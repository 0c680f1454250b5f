"""`gpuzarr selfcheck`: one command for the first machine with a GPU. It writes a small set of
arrays (every codec the GPU decodes: zstd sharded with a crc32c index, zstd with the crc32c
codec, v2 blosc lz4/zstd/zlib with byte and bit shuffle, zlib, gzip, lz4), reads each on the GPU
and on the CPU (full, a window across chunks, a stepped selection, read_batch, points) and
compares the bits, checks that a truncated stream, a crc32c codec and a gzip CRC-32 that do not
match fail the GPU read, prints a throughput line per codec and one verdict line. Without a
usable GPU it says why and exits 1."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numcodecs
import numpy as np

from .errors import CorruptDataError
from .sample import sample_data, write_sharded

V2_CODECS: dict[str, Any] = {
    "blosc-lz4-shuffle": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE),
    "blosc-zlib": numcodecs.Blosc("zlib", 3, numcodecs.Blosc.NOSHUFFLE),
    "zlib": numcodecs.Zlib(3),
    "gzip": numcodecs.GZip(3),
    "lz4": numcodecs.LZ4(),
}


def write_v2(path: str, data: np.ndarray, chunks: tuple[int, ...], codec: Any) -> None:
    """A Zarr v2 array with `codec` as its compressor (what zarr-python writes for it)."""
    os.makedirs(path, exist_ok=True)
    grid = [range(-(-n // c)) for n, c in zip(data.shape, chunks)]
    for coords in np.ndindex(*(len(g) for g in grid)):
        block = np.zeros(chunks, data.dtype)
        part = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks))]
        block[tuple(slice(0, n) for n in part.shape)] = part
        with open(os.path.join(path, ".".join(map(str, coords))), "wb") as f:
            f.write(codec.encode(block.tobytes()))
    meta = {"zarr_format": 2, "shape": list(data.shape), "chunks": list(chunks), "dtype": data.dtype.str,
            "compressor": codec.get_config(), "fill_value": 0, "order": "C", "filters": None}
    with open(os.path.join(path, ".zarray"), "w") as f:
        json.dump(meta, f)


def write_v3_crc32c(path: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    """A Zarr v3 array of codecs bytes, zstd, crc32c (what zarr-python writes for them)."""
    import crc32c

    codec = numcodecs.Zstd(1)
    for coords in np.ndindex(*(-(-n // c) for n, c in zip(data.shape, chunks))):
        block = np.zeros(chunks, data.dtype)
        part = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks))]
        block[tuple(slice(0, n) for n in part.shape)] = part
        frame = codec.encode(block.tobytes())
        os.makedirs(os.path.join(path, "c", *map(str, coords[:-1])), exist_ok=True)
        with open(os.path.join(path, "c", *map(str, coords)), "wb") as f:
            f.write(frame + crc32c.crc32c(frame).to_bytes(4, "little"))
    meta = {"zarr_format": 3, "node_type": "array", "shape": list(data.shape), "data_type": data.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 1, "checksum": False}}, {"name": "crc32c"}]}
    with open(os.path.join(path, "zarr.json"), "w") as f:
        json.dump(meta, f)


def _cases(root: str, size: int) -> dict[str, tuple[str, np.ndarray]]:
    data = sample_data((size, size))
    cases = {}
    path = os.path.join(root, "zstd-sharded")
    write_sharded(path, data, (size // 2, size // 2), (size // 8, size // 8))
    cases["zstd-sharded"] = (path, data)
    path = os.path.join(root, "zstd-crc32c")
    write_v3_crc32c(path, data, (size // 4, size // 4))
    cases["zstd-crc32c"] = (path, data)
    for name, codec in V2_CODECS.items():
        path = os.path.join(root, name)
        write_v2(path, data, (size // 4, size // 4), codec)
        cases[name] = (path, data)
    return cases


def _selections(size: int) -> dict[str, Callable[[Any], Any]]:
    a, b = size // 3, size // 5
    windows = [(slice(y, y + size // 8), slice(x, x + size // 8)) for y, x in ((0, 0), (a, b), (b, a))]
    points = (np.array([0, a, size - 1]), np.array([size - 1, b, 0]))
    return {
        "full": lambda arr: arr[...],
        "window": lambda arr: arr[a:a + size // 4, b:b + size // 3],
        "stepped": lambda arr: arr[::3, ::-2],
        "read_batch": lambda arr: arr.read_batch(windows),
        "points": lambda arr: arr.vindex[points],
    }


def _native(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(x.dtype.newbyteorder("="), copy=False))


def _host(x: Any) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def check(gpu: Any, size: int = 512, out: Any = sys.stdout) -> list[str]:
    """Every comparison and failure check on the device `gpu`; the failures found (empty: all
    passed). Prints a line per case."""
    import gpuzarr

    failures = []
    with tempfile.TemporaryDirectory(prefix="gpuzarr-selfcheck-") as root:
        for name, (path, data) in _cases(root, size).items():
            on_gpu, on_cpu = gpuzarr.open(path, device=gpu), gpuzarr.open(path, device="cpu")
            for label, select in _selections(size).items():
                got, want = _host(select(on_gpu)), select(on_cpu)
                if got.shape != want.shape or got.tobytes() != want.tobytes():
                    failures.append(f"{name} {label}: the GPU read differs from the CPU read")
            gpu_s, cpu_s = _seconds(lambda: on_gpu[...], gpu), _seconds(lambda: on_cpu[...], None)
            print(f"  {name:22s} bit-identical on {len(_selections(size))} selections; full read "
                  f"{data.nbytes / gpu_s / 1e9:6.2f} GB/s on the GPU, {data.nbytes / cpu_s / 1e9:6.2f} on the CPU",
                  file=out)
        failures += _truncated_stream_fails(root, gpu) + _checksum_mismatches_fail(root, gpu)
    return failures


def _seconds(read: Callable[[], Any], gpu: Any) -> float:
    read()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        read()
        if gpu is not None and gpu.xp is not np:
            gpu.xp.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def _truncated_stream_fails(root: str, gpu: Any) -> list[str]:
    """A zstd frame whose header does not state its size, cut short: the GPU must refuse it."""
    import zstandard

    import gpuzarr

    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = os.path.join(root, "truncated")
    write_v2(path, data, (64, 64), numcodecs.Zstd(1))
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data[:32].tobytes())
    with open(os.path.join(path, "0.0"), "wb") as f:
        f.write(frame)  # a valid frame of half the chunk: decodes short
    try:
        _host(gpuzarr.open(path, device=gpu)[...])
    except CorruptDataError:
        return []
    return ["a zstd stream that decodes short was not refused on the GPU"]


def _checksum_mismatches_fail(root: str, gpu: Any) -> list[str]:
    """Chunks that decode to the right size but fail their checksum, which the GPU verifies:
    a crc32c codec's trailer and a gzip member's CRC-32, each with one bit flipped."""
    import gpuzarr

    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    crc32c_path, gzip_path = os.path.join(root, "bad-crc32c"), os.path.join(root, "bad-gzip-crc")
    write_v3_crc32c(crc32c_path, data, (32, 64))
    write_v2(gzip_path, data, (32, 64), numcodecs.GZip(1))
    failures = []
    for path, key, at, what in ((crc32c_path, os.path.join("c", "1", "0"), -1, "crc32c codec"),
                                (gzip_path, "1.0", -8, "gzip CRC-32")):
        with open(os.path.join(path, key), "r+b") as f:
            f.seek(at, os.SEEK_END)
            byte = f.read(1)[0]
            f.seek(at, os.SEEK_END)
            f.write(bytes([byte ^ 1]))
        try:
            _host(gpuzarr.open(path, device=gpu)[...])
            failures.append(f"a {what} that does not match was not refused on the GPU")
        except CorruptDataError:
            pass
    return failures


def sweep(gpu: Any, root: str, out: Any = sys.stdout) -> list[str]:
    """Every array below `root` (a conformance corpus: `python tests/corpus.py DIR` in a source
    checkout writes one) read whole on the GPU and on the CPU, compared bit for bit; the failures.
    An array the GPU path does not take (a dtype without a CuPy type, strings) is counted as
    skipped with its reason, never as passed."""
    import gpuzarr

    from .errors import GpuzarrError, UnsupportedFeatureError

    failures, same, skipped = [], 0, []
    for path in _arrays(root):
        name = os.path.relpath(path, root)
        try:
            want = gpuzarr.open(path, device="cpu")[...]
        except GpuzarrError as exc:  # the corpus holds arrays the CPU refuses too: not a GPU matter
            skipped.append(f"{name} (the CPU refuses it too: {type(exc).__name__})")
            continue
        try:
            got = _host(gpuzarr.open(path, device=gpu)[...])
        except UnsupportedFeatureError as exc:
            skipped.append(f"{name} ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001 - every other outcome is a failure to report
            failures.append(f"{name}: the GPU read failed: {type(exc).__name__}: {exc}")
            continue
        got, want = _native(got), _native(want)  # CuPy has native byte order only: the GPU's is
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            failures.append(f"{name}: the GPU read differs from the CPU read")
        else:
            same += 1
    print(f"  corpus {root}: {same} arrays bit-identical, {len(failures)} failed, {len(skipped)} skipped",
          file=out)
    for line in skipped:
        print(f"    skipped: {line}", file=out)
    return failures


def _arrays(root: str) -> list[str]:
    """Directories below `root` holding an array's metadata (v3 zarr.json of an array, v2 .zarray)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if ".zarray" in files:
            found.append(folder)
        elif "zarr.json" in files:
            with open(os.path.join(folder, "zarr.json"), "rb") as f:
                if json.loads(f.read() or b"{}").get("node_type") == "array":
                    found.append(folder)
    return found


def main(gpu: Any = None, size: int = 512, corpus: str | None = None) -> int:
    from .devices.base import get_device
    from .devices.gpu import usable_gpu

    if gpu is None:
        ok, why = usable_gpu()
        if not ok:
            print(f"gpuzarr selfcheck: {why}")
            return 1
        gpu = get_device("gpu")
    print(f"gpuzarr selfcheck on {gpu.name}:")
    failures = check(gpu, size)
    if corpus is not None:
        failures += sweep(gpu, corpus)
    for failure in failures:
        print(f"  FAILED: {failure}")
    print("gpuzarr selfcheck: " + ("PASSED" if not failures else f"FAILED ({len(failures)} problems)"))
    return 0 if not failures else 1
