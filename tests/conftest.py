"""Session fixtures: the corpus (tests/corpus.py) written once per test session."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (corpus, checks) import by name

import corpus as corpus_module  # noqa: E402
from checks import open_zarr_array  # noqa: E402


@dataclass
class Corpus:
    """Where each case was written, and the error of every case whose writer failed."""

    root: Path
    errors: dict = field(default_factory=dict)
    _zarr: dict = field(default_factory=dict)

    def path(self, target: str) -> Path:
        """Path of a case, or of a group member given as "<group case>/<member>"."""
        name = target.split("/", 1)[0]
        if name in self.errors:
            e = self.errors[name]
            if _raised_by_writer(e):  # another version of zarr-python/tensorstore than CI's
                pytest.skip(f"the writer library cannot write corpus case {name} in this version: "
                            f"{type(e).__name__}: {e}")
            pytest.fail(f"corpus case {name} could not be written: {type(e).__name__}: {e}")
        return self.root / target

    def zarr_array(self, target: str):
        """The reference for an array target, opened once: zarr-python's read-only array, or a
        SourceReference for the few cases zarr-python cannot read (CorpusCase.reference)."""
        if target not in self._zarr:
            case = corpus_module.BY_NAME[target.split("/", 1)[0]]
            if case.reference == "source":
                self._zarr[target] = SourceReference(case, self.path(target))
            else:
                self._zarr[target] = open_zarr_array(self.path(target))
        return self._zarr[target]


def _raised_by_writer(exc: BaseException) -> bool:
    """Whether the innermost Python file of the traceback is inside zarr-python, numcodecs or
    tensorstore, not the corpus's own code (compiled frames, e.g. Cython's, have no path)."""
    where, tb = "", exc.__traceback__
    while tb is not None:
        if os.path.isabs(tb.tb_frame.f_code.co_filename):
            where = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return any(f"{os.sep}{lib}{os.sep}" in where for lib in ("zarr", "numcodecs", "tensorstore"))


class SourceReference:
    """Stands in for a zarr.Array where zarr-python cannot read a (valid) case: the case's source
    data, with the metadata read straight from its zarr.json and reported the way zarr-python
    reports it (sharding counts only as the first codec; otherwise chunks = the grid chunk)."""

    def __init__(self, case, path: Path):
        meta = json.loads((path / "zarr.json").read_text())
        self._data = case.expected()
        self.shape, self.ndim, self.dtype = self._data.shape, self._data.ndim, self._data.dtype
        grid = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        first = meta["codecs"][0]
        if first["name"] == "sharding_indexed":
            self.chunks, self.shards = tuple(first["configuration"]["chunk_shape"]), grid
        else:
            self.chunks, self.shards = grid, None
        self.fill_value = _parse_v3_fill(meta["fill_value"], self.dtype)
        self.attrs = SimpleNamespace(asdict=lambda: dict(meta.get("attributes", {})))
        self.metadata = SimpleNamespace(zarr_format=3, dimension_names=meta.get("dimension_names"))
        self.nbytes = self._data.nbytes

    def __getitem__(self, sel):
        return self._data[sel]


def _parse_v3_fill(v, dtype: np.dtype):
    if isinstance(v, dict):  # "struct": a value per field, in the dtype's field order
        return np.array(_field_tuple(v, dtype), dtype=dtype)[()]
    if isinstance(v, list):
        return np.complex128(complex(_parse_v3_fill(v[0], np.dtype("f8")), _parse_v3_fill(v[1], np.dtype("f8")))) \
            .astype(dtype)
    if isinstance(v, str) and v.startswith("0x"):
        return np.frombuffer(int(v, 16).to_bytes(dtype.itemsize, "little"), dtype.newbyteorder("<"))[0]
    if isinstance(v, str):
        return np.asarray({"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[v], dtype=dtype)[()]
    return np.asarray(v, dtype=dtype)[()]


def _field_tuple(v: dict, dtype: np.dtype) -> tuple:
    return tuple(_field_tuple(v[n], dtype[n]) if isinstance(v[n], dict) else v[n] for n in dtype.names)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    errors = corpus_module.write_corpus(root)
    return Corpus(root, errors)
