"""The readers under test, behind one small interface, all in this process.

Each reader opens a dataset once (outside every timer) and then serves:
  read(sel)        one selection -> array
  read_many(sels)  many same-shaped selections -> list (or stacked array), its best way
  context()        entered around open AND every timed call, outside the timer (zarrs needs its
                   codec pipeline configured while it reads, not only while it opens)
  sync(result)     makes the result complete (GPU: synchronises the device) - inside the timer
  to_host(result)  a NumPy array for checking - outside the timer
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetSpec

READER_NAMES = ("gpuzarr", "tensorstore", "zarrs-python", "zarr-python+gpuzarr", "zarr-python")


class ReaderError(Exception):
    pass


class BenchReader:
    name = "?"
    batch_mode = "one by one"

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def open(self, spec: DatasetSpec, path: Path) -> None:
        raise NotImplementedError

    def read(self, sel: tuple) -> Any:
        raise NotImplementedError

    def read_many(self, sels: list[tuple]) -> Any:
        return [self.read(s) for s in sels]

    def sync(self, result: Any) -> None:
        pass

    def to_host(self, result: Any) -> np.ndarray:
        return np.asarray(result)

    def info(self) -> dict:
        return {"batch_mode": self.batch_mode}


class GpuzarrReader(BenchReader):
    name = "gpuzarr"
    batch_mode = "read_batch (one pipeline pass, stacked output)"

    def __init__(self, device: str = "cpu", module: str = "gpuzarr", name: str = "gpuzarr"):
        self.device, self.module, self.name = device, module, name  # module: another revision (bench.ab)
        self._xp = None

    def open(self, spec: DatasetSpec, path: Path) -> None:
        gpuzarr = importlib.import_module(self.module)

        self.arr = gpuzarr.open(str(path), device=self.device)
        self._xp = self.arr._device.xp

    def read(self, sel: tuple) -> Any:
        return self.arr[sel]

    def read_many(self, sels: list[tuple]) -> Any:
        return self.arr.read_batch(sels)

    def sync(self, result: Any) -> None:
        if self._xp is not None and self._xp is not np:  # CuPy: wait for the device
            self._xp.cuda.Device().synchronize()

    def to_host(self, result: Any) -> np.ndarray:
        if self._xp is not None and self._xp is not np:
            return self._xp.asnumpy(result)
        return np.asarray(result)

    def info(self) -> dict:
        gpuzarr = importlib.import_module(self.module)

        return {"batch_mode": self.batch_mode, "device": self.arr.device, "version": gpuzarr.__version__,
                "settings": repr(self.arr._reader.settings)}


class TensorstoreReader(BenchReader):
    name = "tensorstore"
    batch_mode = "all reads issued, then every future awaited"

    def open(self, spec: DatasetSpec, path: Path) -> None:
        import tensorstore as ts

        self.store = ts.open({
            "driver": "zarr3" if spec.zarr_format == 3 else "zarr",
            "kvstore": {"driver": "file", "path": str(path)},
            "context": {"cache_pool": {"total_bytes_limit": 0}},
        }).result()

    def read(self, sel: tuple) -> Any:
        return self.store[sel].read().result()

    def read_many(self, sels: list[tuple]) -> Any:
        futures = [self.store[s].read() for s in sels]
        return [f.result() for f in futures]


class ZarrPythonReader(BenchReader):
    """zarr-python 3. read_many runs the reads concurrently on zarr's own event loop
    (asyncio.gather over AsyncArray.getitem): its best for many small reads."""

    name = "zarr-python"
    batch_mode = "asyncio.gather over AsyncArray.getitem on zarr's event loop"
    expect_pipeline = "BatchedCodecPipeline"

    def open(self, spec: DatasetSpec, path: Path) -> None:
        import zarr

        with self.context():
            self.arr = zarr.open_array(str(path), mode="r")
        pipeline = type(self.arr._async_array.codec_pipeline).__name__
        if pipeline != self.expect_pipeline:
            raise ReaderError(f"opened with codec pipeline {pipeline}, expected {self.expect_pipeline}")
        self.pipeline = pipeline

    def read(self, sel: tuple) -> Any:
        return self.arr[sel]

    def read_many(self, sels: list[tuple]) -> Any:
        return zarr_gather(self.arr, sels)

    def info(self) -> dict:
        import zarr

        return {"batch_mode": self.batch_mode, "codec_pipeline": self.pipeline,
                "async.concurrency": zarr.config.get("async.concurrency")}


def zarr_gather(arr: Any, sels: list[tuple]) -> list:
    """zarr-python's best for many reads: all of them at once on its event loop."""
    from zarr.core.sync import sync

    aarr = arr._async_array

    async def gather() -> list:
        return await asyncio.gather(*(aarr.getitem(s) for s in sels))

    return sync(gather())


class ZarrsReader(ZarrPythonReader):
    name = "zarrs-python"
    expect_pipeline = "ZarrsCodecPipeline"

    def context(self) -> contextlib.AbstractContextManager:
        import zarr

        return zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


class ZarrGpuzarrReader(ZarrPythonReader):
    """zarr-python's API (`zarr.open_array`, `arr[sel]`, `asyncio.gather`) with gpuzarr's codec
    pipeline (`gpuzarr.CodecPipeline`). Reads gpuzarr hands back to zarr-python's own pipeline are
    counted (gpuzarr.zarr_pipeline.FALLBACKS) and reported in info()."""

    name = "zarr-python+gpuzarr"
    expect_pipeline = "CodecPipeline"

    def context(self) -> contextlib.AbstractContextManager:
        import zarr

        return zarr.config.set({"codec_pipeline.path": "gpuzarr.CodecPipeline"})

    def open(self, spec: DatasetSpec, path: Path) -> None:
        super().open(spec, path)
        module = type(self.arr._async_array.codec_pipeline).__module__
        if module != "gpuzarr":
            raise ReaderError(f"opened with codec pipeline {module}.{self.pipeline}, expected gpuzarr.CodecPipeline")
        self.pipeline = f"{module}.{self.pipeline}"

    def info(self) -> dict:
        from gpuzarr.zarr_pipeline import FALLBACKS

        return {**super().info(), "fallbacks_so_far": dict(FALLBACKS)}


def open_readers(names: list[str], device: str, spec: Any, path: Path, infos: dict) -> list[BenchReader]:
    """The readers, each opened on the dataset (outside any timer) and its info kept in `infos`;
    one that fails to open keeps why (`open_error`, reported instead of its times) and the
    others go on."""
    readers = make_readers(names, device)
    for r in readers:
        try:
            with r.context():
                r.open(spec, path)
            infos.setdefault(r.name, r.info())
        except Exception as exc:
            r.open_error = f"open failed: {type(exc).__name__}: {exc}"
            infos.setdefault(r.name, {})
            print(f"[bench]   {r.name}: {r.open_error}", file=sys.stderr, flush=True)
    return readers


def make_readers(names: list[str], device: str) -> list[BenchReader]:
    table = {"gpuzarr": lambda: GpuzarrReader(device), "tensorstore": TensorstoreReader,
             "zarrs-python": ZarrsReader, "zarr-python+gpuzarr": ZarrGpuzarrReader,
             "zarr-python": ZarrPythonReader}
    return [table[n]() for n in names]
