"""Benchmark datasets: specs, deterministic realistic-compressible data, generation into the
cache (written by zarr-python, checked through tensorstore), and the compressed frames of
every inner chunk (for the libzstd floor).

Data: a dark background (~100) with smooth bright structures (the positive part of sines
along every axis plus a cross term, up to ~3300, i.e. 12-bit), a weak gradient, and 4 bits of
per-element noise from an integer hash of the element's linear index. About half the area is
background: chunks compress unevenly, as microscopy images do (zstd level 3: ~2x overall at
the default sizes), never like zeros or white noise. Any region can be regenerated exactly
without the rest (the checks use that).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GEN_VERSION = 1  # bump when the data or the layout written for a spec changes


def cache_key(name: str, params: dict, gen_version: int) -> str:
    """A generated dataset's folder name: its parameters and generator version, hashed."""
    doc = json.dumps({**params, "gen_version": gen_version}, sort_keys=True)
    return f"{name}-{hashlib.sha256(doc.encode()).hexdigest()[:12]}"
NAMES = ("2d", "3d", "v2", "ml")


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # short name used on the command line: 2d, 3d, v2, ml
    title: str
    shape: tuple[int, ...]
    dtype: str
    zarr_format: int
    chunks: tuple[int, ...]  # inner chunks (sharded v3) or chunks (v2)
    shards: tuple[int, ...] | None
    codec: str  # "zstd" or "blosc-lz4"
    level: int
    window: tuple[int | None, ...]  # window/patch extent per axis; None: one integer index (axis dropped)

    @property
    def key(self) -> str:
        return cache_key(self.name, asdict(self), GEN_VERSION)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.chunk_grid)

    @property
    def has_floor(self) -> bool:
        return self.codec == "zstd" and self.shards is not None

    def describe(self) -> str:
        shards = "x".join(map(str, self.shards)) if self.shards else "none"
        return (f"{'x'.join(map(str, self.shape))} {self.dtype}, v{self.zarr_format}, shards {shards}, "
                f"chunks {'x'.join(map(str, self.chunks))}, {self.codec} level {self.level}")


def _fit(shard: int, size: int, chunk: int) -> int:
    """The shard extent, shrunk to the array (rounded up to whole chunks) on small arrays."""
    return min(shard, -(-size // chunk) * chunk)


def make_specs(size_2d: int = 4096, size_3d: int = 512, ml_shape: tuple[int, int, int] = (64, 1024, 1024),
               level_3d: int = 3) -> dict[str, DatasetSpec]:
    s2, s3 = size_2d, size_3d
    z, y, x = ml_shape
    return {
        "2d": DatasetSpec("2d", "2-D image, sharded zstd", (s2, s2), "uint16", 3, (128, 128),
                          (_fit(1024, s2, 128),) * 2, "zstd", 3, (256, 256)),
        "3d": DatasetSpec("3d", "3-D volume, sharded zstd", (s3,) * 3, "uint16", 3, (64, 64, 64),
                          (_fit(256, s3, 64),) * 3, "zstd", level_3d, (64, 64, 64)),
        "v2": DatasetSpec("v2", "2-D image, Zarr v2 unsharded blosc-lz4 + shuffle", (s2, s2), "uint16", 2,
                          (256, 256), None, "blosc-lz4", 5, (256, 256)),
        # An ML training stack: 2-D slices, each inner chunk one 256x256 tile of one slice, shards of
        # 8 slices x 512x512 (32 tiles, ~1 MiB compressed); read as random 256x256 patches of single
        # slices (the z index is an integer, as a data loader does).
        "ml": DatasetSpec("ml", "ML patch stack (2-D slices), sharded zstd", (z, y, x), "uint16", 3, (1, 256, 256),
                          (min(8, z), _fit(512, y, 256), _fit(512, x, 256)), "zstd", 3, (None, 256, 256)),
    }


# --------------------------------------------------------------------------- data


def _hash_noise(index: np.ndarray, bits: int) -> np.ndarray:
    """Per-element pseudo-random bits from the linear index (splitmix64-style finaliser)."""
    h = index * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h & np.uint64((1 << bits) - 1)).astype(np.float32)


def generate(spec: DatasetSpec, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """The dataset's values in the box [lo, hi): the same whatever box is asked for."""
    out = np.empty(tuple(b - a for a, b in zip(lo, hi)), dtype=spec.dtype)
    if out.size == 0:
        return out
    ndim = len(spec.shape)
    plane = math.prod(out.shape[1:]) or 1
    step = max(1, (1 << 22) // plane)  # bounded temporaries: ~4M elements at a time
    strides = [math.prod(spec.shape[d + 1:]) for d in range(ndim)]
    freqs = (3.0, 5.0, 7.0, 4.0)
    for a in range(lo[0], hi[0], step):
        b = min(hi[0], a + step)
        box_lo, box_hi = (a,) + tuple(lo[1:]), (b,) + tuple(hi[1:])
        axes = []
        for d in range(ndim):
            idx = np.arange(box_lo[d], box_hi[d], dtype=np.int64)
            shape = [1] * ndim
            shape[d] = idx.size
            axes.append((idx.reshape(shape), (idx.astype(np.float32) / spec.shape[d]).reshape(shape)))
        field = sum(np.sin(np.float32(2 * math.pi * freqs[d % 4]) * t + np.float32(d)) for d, (_, t) in enumerate(axes))
        field = field / np.float32(ndim)
        cross = np.sin(np.float32(2 * math.pi) * (np.float32(3) * axes[0][1] + np.float32(5) * axes[-1][1]))
        linear = sum(i.astype(np.uint64) * np.uint64(s) for (i, _), s in zip(axes, strides))
        signal = np.maximum(np.float32(0.7) * field + np.float32(0.3) * cross, np.float32(0))
        values = (np.float32(100) + np.float32(3000) * signal + np.float32(200) * axes[-1][1]
                  + _hash_noise(linear, 4))
        out[a - lo[0]:b - lo[0]] = np.clip(values, 0, np.iinfo(spec.dtype).max).astype(spec.dtype)
    return out


# --------------------------------------------------------------------------- cache


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cache_slot(cache: Path, key: str) -> tuple[Path, dict | None, Path]:
    """(the dataset's path, its info document if it is there, else None, and an emptied
    folder to write it into before moving it to the path)."""
    cache.mkdir(parents=True, exist_ok=True)
    path, marker = cache / f"{key}.zarr", cache / f"{key}.json"
    if path.is_dir() and marker.is_file():
        return path, json.loads(marker.read_text()), path
    tmp = cache / f"{key}.tmp-{os.getpid()}.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    return path, None, tmp


def ensure(spec: DatasetSpec, cache: Path) -> tuple[Path, dict]:
    """The dataset's path in the cache, generating it first if absent; plus its info document."""
    path, info, tmp = cache_slot(cache, spec.key)
    if info is not None:
        return path, info
    _log(f"generating {spec.name}: {spec.describe()} ({spec.nbytes / 2**20:.0f} MiB) -> {path}")
    t0 = time.perf_counter()
    _write(spec, tmp)
    checked = _check_with_tensorstore(spec, tmp)
    os.replace(tmp, path)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    info = {"spec": asdict(spec), "gen_version": GEN_VERSION, "path": str(path), "stored_bytes": stored,
            "ratio": spec.nbytes / stored, "written_by": "zarr-python " + _version("zarr"),
            "tensorstore_check": checked, "seconds": round(time.perf_counter() - t0, 1)}
    (cache / f"{spec.key}.json").write_text(json.dumps(info, indent=2))
    _log(f"  {spec.name}: {stored / 2**20:.1f} MiB stored, ratio {info['ratio']:.2f}, {info['seconds']} s")
    return path, info


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def _write(spec: DatasetSpec, path: Path) -> None:
    import zarr

    if spec.zarr_format == 3:
        from zarr.codecs import ZstdCodec

        arr = zarr.create_array(store=str(path), shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks,
                                shards=spec.shards, compressors=ZstdCodec(level=spec.level, checksum=False),
                                filters=None, fill_value=0, zarr_format=3,
                                attributes={"bench": spec.key})
    else:
        import numcodecs

        assert spec.codec == "blosc-lz4"
        arr = zarr.create_array(store=str(path), shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks,
                                compressors=numcodecs.Blosc(cname="lz4", clevel=spec.level,
                                                            shuffle=numcodecs.Blosc.SHUFFLE),
                                filters=None, fill_value=0, zarr_format=2, attributes={"bench": spec.key})
    # write whole shard (or chunk) slabs along axis 0, so no shard is ever rewritten
    unit = (spec.shards or spec.chunks)
    slab = unit[0]
    for a in range(0, spec.shape[0], slab):
        b = min(spec.shape[0], a + slab)
        lo = (a,) + (0,) * (len(spec.shape) - 1)
        hi = (b,) + spec.shape[1:]
        arr[a:b] = generate(spec, lo, hi)


def _check_with_tensorstore(spec: DatasetSpec, path: Path) -> list:
    """tensorstore must read what zarr-python wrote, and it must be the generated data."""
    import tensorstore as ts

    store = ts.open({"driver": "zarr3" if spec.zarr_format == 3 else "zarr",
                     "kvstore": {"driver": "file", "path": str(path)},
                     "context": {"cache_pool": {"total_bytes_limit": 0}}}).result()
    rng = np.random.default_rng(7)
    boxes = [tuple((0, min(n, 2 * c)) for n, c in zip(spec.shape, spec.chunks)),
             tuple((max(0, n - c - 3), n) for n, c in zip(spec.shape, spec.chunks))]
    for _ in range(2):
        box = []
        for n, c in zip(spec.shape, spec.chunks):
            extent = min(n, c + c // 2)
            start = int(rng.integers(0, n - extent + 1))
            box.append((start, start + extent))
        boxes.append(tuple(box))
    done = []
    for box in boxes:
        got = store[tuple(slice(a, b) for a, b in box)].read().result()
        want = generate(spec, tuple(a for a, _ in box), tuple(b for _, b in box))
        if not np.array_equal(got, want):
            raise RuntimeError(f"{path}: tensorstore reads {box} differently from the generated data")
        done.append([list(b) for b in box])
    return done


def warm_page_cache(path: Path) -> int:
    """Read every file once so that all timings start from a warm page cache."""
    total = 0
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    total += len(chunk)
    return total


# --------------------------------------------------------------------------- frames (floor)


class Frames:
    """The compressed bytes of every inner chunk of a sharded v3 array, parsed from the shard
    files directly (independently of every reader), held in memory."""

    def __init__(self, spec: DatasetSpec, path: Path):
        meta = json.loads((path / "zarr.json").read_text())
        (sharding,) = meta["codecs"]
        assert sharding["name"] == "sharding_indexed", sharding
        conf = sharding["configuration"]
        inner = tuple(conf["chunk_shape"])
        shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        assert meta["chunk_key_encoding"]["name"] == "default"
        has_crc = any(c["name"] == "crc32c" for c in conf["index_codecs"])
        at_end = conf.get("index_location", "end") == "end"
        cps = tuple(s // c for s, c in zip(shard, inner))
        n_index = math.prod(cps)
        index_bytes = 16 * n_index + (4 if has_crc else 0)
        self.spec = spec
        self.chunk_nbytes = math.prod(inner) * np.dtype(spec.dtype).itemsize
        self.frames: dict[tuple[int, ...], bytes] = {}
        shard_grid = tuple(-(-n // s) for n, s in zip(spec.shape, shard))
        for scoord in itertools.product(*(range(g) for g in shard_grid)):
            key = path / ("c" + sep + sep.join(map(str, scoord)))
            if not key.is_file():
                continue
            blob = key.read_bytes()
            raw = blob[-index_bytes:] if at_end else blob[:index_bytes]
            index = np.frombuffer(raw[:16 * n_index], dtype="<u8").reshape(-1, 2)
            for flat, (off, size) in enumerate(index):
                if size == 2**64 - 1:
                    continue
                local = np.unravel_index(flat, cps)
                coord = tuple(int(s * c + i) for s, c, i in zip(scoord, cps, local))
                if any(c >= g for c, g in zip(coord, spec.chunk_grid)):
                    continue
                self.frames[coord] = blob[int(off):int(off) + int(size)]

    @property
    def compressed_bytes(self) -> int:
        return sum(len(f) for f in self.frames.values())
