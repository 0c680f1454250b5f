"""Shared checks for the conformance and property tests: bit-identical comparison, reference reads,
and the named selections every corpus array is read with."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import fsspec
import numpy as np

# The selections every corpus array is read with (see `selections`).
SELECTION_LABELS = ("full", "window", "step2", "step3", "negstep", "point", "negidx", "edge",
                    "cross_shard", "empty", "ellipsis_int")


# how zarr-python 3 reads strings: NumPy's StringDType (object arrays of str before NumPy 2)
STRINGS = np.dtypes.StringDType() if hasattr(np.dtypes, "StringDType") else np.dtype(object)


def is_vlen(dtype: np.dtype) -> bool:
    """Variable-length items (object or NumPy StringDType): compared element by element."""
    return dtype.kind in "OT"


def assert_identical(got: Any, ref: Any, what: str = "") -> None:
    """Same shape, same dtype and the same bits (NaN payloads and -0.0 count); vlen: equal items.

    A vlen array has the reference's dtype (zarr-python reads strings, v2's vlen-utf8 among
    them, as NumPy's StringDType, bytes as objects); its items must be equal and of the same
    Python type.
    """
    where = f"{what}: " if what else ""
    got_a, ref_a = _as_array(got), _as_array(ref)
    assert got_a.shape == ref_a.shape, f"{where}shape {got_a.shape} != reference {ref_a.shape}"
    if is_vlen(ref_a.dtype) or is_vlen(got_a.dtype):
        assert got_a.dtype == ref_a.dtype, f"{where}dtype {got_a.dtype} != reference {ref_a.dtype} (variable-length)"
        g, r = [_item(x) for x in got_a.ravel().tolist()], [_item(x) for x in ref_a.ravel().tolist()]
        bad = [i for i, (x, y) in enumerate(zip(g, r)) if type(x) is not type(y) or x != y]
        assert not bad, f"{where}{len(bad)} items differ, first at flat {bad[0]}: {g[bad[0]]!r} != {r[bad[0]]!r}"
        return
    assert got_a.dtype == ref_a.dtype, f"{where}dtype {got_a.dtype} != reference {ref_a.dtype}"
    gb = np.array(got_a, order="C", copy=True).tobytes()
    rb = np.array(ref_a, order="C", copy=True).tobytes()
    if gb != rb:
        item = ref_a.dtype.itemsize or 1
        diff = next(i for i, (x, y) in enumerate(zip(gb, rb)) if x != y) // item
        idx = np.unravel_index(diff, ref_a.shape) if ref_a.shape else ()
        n_bad = sum(1 for i in range(0, len(rb), item) if gb[i:i + item] != rb[i:i + item])
        raise AssertionError(
            f"{where}{n_bad} of {ref_a.size} elements differ; first at {tuple(int(i) for i in idx)}: "
            f"{got_a[idx]!r} ({gb[diff * item:(diff + 1) * item].hex()}) != "
            f"{ref_a[idx]!r} ({rb[diff * item:(diff + 1) * item].hex()})")


def _item(x: Any) -> Any:
    """A vlen item as a plain str/bytes (zarr-python may wrap a single item in a 0-d array)."""
    while isinstance(x, (np.ndarray, np.generic)) and np.ndim(x) == 0:
        x = x.item()
    return x


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, (str, bytes)):  # one vlen item: a string as zarr-python reads strings
        out = np.empty((), dtype=STRINGS if isinstance(x, str) else object)
        out[()] = x
        return out
    return np.asarray(x)


def has_negative_step(sel: Any) -> bool:
    items = sel if isinstance(sel, tuple) else (sel,)
    return any(isinstance(s, slice) and s.step is not None and s.step < 0 for s in items)


def reference_read(zarr_array: Any, sel: Any) -> np.ndarray:
    """zarr-python's answer for `sel` as NumPy would shape it.

    zarr-python refuses negative steps (those index its full read instead), and returns a bare
    scalar for some single-element reads where NumPy returns a 0-d array (e.g. ``a[..., 3]`` on a
    1-d ``<U6`` array gives a ``str_`` whose own dtype is ``<U1``): such scalars become 0-d arrays
    of the array's dtype.
    """
    if has_negative_step(sel):
        return np.asarray(zarr_array[...])[sel]
    out = zarr_array[sel]
    if not isinstance(out, np.ndarray):
        out = as_0d(out, zarr_array.dtype)
    elif out.ndim == 0 and is_vlen(zarr_array.dtype) and not is_vlen(out.dtype):
        out = as_0d(_item(out), zarr_array.dtype)  # one vlen-bytes item comes back as a 0-d '|S<n>'
    return out


def as_0d(x: Any, dtype: np.dtype) -> np.ndarray:
    """A scalar result as a 0-d array of the array's dtype."""
    out = np.empty((), dtype=dtype)
    out[()] = x
    return out


def selections(shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None) -> dict:
    """{label: selection or None (does not apply to this shape)} for every SELECTION_LABELS entry."""
    nd = len(shape)
    out: dict[str, Any] = dict.fromkeys(SELECTION_LABELS)
    out["full"] = ...
    if nd == 0:
        out["point"] = ()
        out["ellipsis_int"] = (Ellipsis,)
        return out
    grid = tuple(shards) if shards else tuple(chunks)
    has_zero = 0 in shape

    def window(s, c):  # starts off a chunk boundary, spans more than one chunk where it can
        start = min(s, c // 2 + 1) if s > 1 else 0
        return slice(start, min(s, start + c + 3))

    out["window"] = tuple(window(s, c) for s, c in zip(shape, chunks))
    out["step2"] = tuple(slice(None, None, 2) if i % 2 == 0 else slice(1, None, 2) for i in range(nd))
    out["step3"] = tuple(slice(s // 4, None, 3) for s in shape)
    out["negstep"] = tuple(slice(None, None, -1) if i % 2 == 0 else slice(max(s - 2, 0), None, -3)
                           for i, s in enumerate(shape))
    out["empty"] = (slice(3, 1),) + (slice(None),) * (nd - 1)
    if not has_zero:
        out["point"] = tuple(s // 2 for s in shape)
        out["negidx"] = (-1,) + tuple(slice(-3, -1) for _ in shape[1:])
        out["edge"] = tuple(slice(((s - 1) // c) * c, s) for s, c in zip(shape, chunks))
        out["ellipsis_int"] = (Ellipsis, -(shape[-1] // 3) - 1)
    out["cross_shard"] = tuple(slice(max(0, g - 2), min(s, g + 2)) if g < s else slice(s // 2, s)
                               for s, g in zip(shape, grid))
    return out


def poisoned_empty(self: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """CpuDevice.empty whose every byte is 0xA5 until a read writes it: np.empty may hand back
    the memory of an earlier, identical read, which hides an element a read left unwritten."""
    out = np.empty(shape, dtype)
    if not is_vlen(out.dtype):
        out.reshape(-1).view(np.uint8).fill(0xA5)
    return out


def stack(arrays: list) -> np.ndarray:
    """np.stack that keeps the dtype as it is (np.stack turns '>f8' into native 'float64')."""
    arrays = [np.asarray(a) for a in arrays]
    out = np.empty((len(arrays),) + arrays[0].shape, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def fill_bytes_equal(got: Any, ref: Any, dtype: np.dtype) -> bool:
    """Fill values compared as the array would hold them (bits for numbers, == otherwise)."""
    if ref is None:
        return got is None or got == 0 or got == b"" or got == ""
    if is_vlen(dtype) or dtype.fields is not None or dtype.kind in "SUV":
        try:
            return bool(np.asarray(got, dtype=dtype) == np.asarray(ref, dtype=dtype)) if not is_vlen(dtype) \
                else got == ref
        except Exception:
            return False
    try:
        return np.asarray(got, dtype=dtype).tobytes() == np.asarray(ref, dtype=dtype).tobytes()
    except Exception:
        return False


def open_zarr_array(path: Path):
    """zarr.open_array read-only, without its notes on numcodecs codecs and late sharding."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return zarr.open_array(str(path), mode="r")


def to_memory(src: str | Path, name: str) -> str:
    """Copy a local array into fsspec's memory filesystem: reads of it go through the generic
    (non-local) store path."""
    fs = fsspec.filesystem("memory")
    for root, _, files in os.walk(src):
        for file in files:
            rel = os.path.relpath(os.path.join(root, file), src)
            fs.pipe(f"/{name}/{rel}", Path(root, file).read_bytes())
    return f"memory://{name}"


@contextlib.contextmanager
def pooled_reads() -> Iterator[None]:
    """Local reads as remote ones go: fetched into staging, then decoded by the CPU device's pool
    (its task split, parts of GROUP_BYTES), not inline, not by the small path (windows of up to
    LOCATE_ARRAYS chunks) and not read by the tasks themselves (a batch the pool decodes): the
    tests of that path's placement, on arrays of a few chunks."""
    from gpuzarr.devices import cpu
    from gpuzarr.small_read import SmallReads

    with mock.patch.object(cpu, "SPLIT_SECONDS", 0.0), mock.patch.object(SmallReads, "read", lambda self, *a: None), \
            mock.patch.object(cpu.CpuDevice, "reads_in_tasks", False):
        yield


def pool_tasks(device: Any, monkeypatch: Any) -> list:
    """Every task given to `device`'s pool from now on (submit, and submit_beside: work the caller
    does its own part beside), as its arguments."""
    given: list = []
    for name in ("submit", "submit_beside"):
        real = getattr(device.pool, name)
        monkeypatch.setattr(device.pool, name, lambda *a, real=real: given.append(a) or real(*a))
    return given
