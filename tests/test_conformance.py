"""Every corpus array read by gpuzarr (CPU) must equal zarr-python's read, bit for bit.

zarr-python is the reference; the corpus (tests/corpus.py) was written by zarr-python and
tensorstore. Also: metadata attributes, read_batch, read(out=...), groups, consolidated metadata,
and the store forms gpuzarr.open accepts (path, file:// URL, fsspec mapper and filesystem, memory://).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

import gpuzarr
from checks import (SELECTION_LABELS, as_0d, assert_identical, fill_bytes_equal, is_vlen, reference_read,
                    selections, stack)
from corpus import ARRAY_CASES, BY_NAME, GROUP_CASES, GROUP_MEMBERS, make_data

# Array targets: every array case, and every array inside a group case ("<group>/<member>").
TARGETS = [c.name for c in ARRAY_CASES] + [f"{g.name}/{m}" for g in GROUP_CASES for m in GROUP_MEMBERS]

_opened: dict[str, gpuzarr.Array] = {}


def gz_array(corpus, target: str) -> gpuzarr.Array:
    """gpuzarr's view of a target, opened once per session (device="cpu")."""
    if target not in _opened:
        arr = gpuzarr.open(str(corpus.path(target)), device="cpu")
        assert isinstance(arr, gpuzarr.Array), f"{target}: gpuzarr.open returned {type(arr).__name__}"
        _opened[target] = arr
    return _opened[target]


def _selection(corpus, target: str, label: str):
    z = corpus.zarr_array(target)
    sel = selections(z.shape, z.chunks, z.shards)[label]
    if sel is None:
        pytest.skip(f"{label!r} does not apply to shape {z.shape}")
    return z, sel


# ----------------------------------------------------------------------------------------------
# Reads


@pytest.mark.parametrize("label", SELECTION_LABELS)
@pytest.mark.parametrize("target", TARGETS)
def test_read_matches_zarr_python(corpus, target, label):
    z, sel = _selection(corpus, target, label)
    ref = reference_read(z, sel)
    got = gz_array(corpus, target)[sel]
    is_point = isinstance(sel, tuple) and all(isinstance(s, int) for s in sel)
    if is_point and not isinstance(got, np.ndarray):  # one element: a NumPy scalar is fine too
        got = as_0d(got, np.dtype(gz_array(corpus, target).dtype))
    assert isinstance(got, np.ndarray), f"arr[{sel!r}] returned {type(got).__name__}, not numpy.ndarray"
    assert_identical(got, ref, f"{target}[{sel!r}]")


@pytest.mark.parametrize("target", TARGETS)
def test_metadata_matches_zarr_python(corpus, target):
    z = corpus.zarr_array(target)
    g = gz_array(corpus, target)
    problems = []

    def check(name, got, want):
        if got != want:
            problems.append(f"{name}: gpuzarr {got!r} != zarr-python {want!r}")

    check("shape", tuple(g.shape), tuple(z.shape))
    check("ndim", g.ndim, z.ndim)
    check("dtype", np.dtype(g.dtype), z.dtype)  # strings: StringDType, v2's vlen-utf8 included
    # Where sharding follows an array->array codec (transpose), zarr-python reports the grid chunk
    # as `chunks` and shards=None; gpuzarr follows the same convention.
    check("chunks", tuple(g.chunks), tuple(z.chunks))
    check("shards", None if g.shards is None else tuple(g.shards), None if z.shards is None else tuple(z.shards))
    check("zarr_format", g.zarr_format, z.metadata.zarr_format)
    check("attrs", dict(g.attrs), z.attrs.asdict())
    want_dims = getattr(z.metadata, "dimension_names", None)
    got_dims = g.dimension_names
    check("dimension_names", None if got_dims is None else tuple(got_dims),
          None if want_dims is None else tuple(want_dims))
    if not fill_bytes_equal(g.fill_value, z.fill_value, z.dtype):
        problems.append(f"fill_value: gpuzarr {g.fill_value!r} != zarr-python {z.fill_value!r}")
    if not is_vlen(z.dtype):
        check("nbytes", g.nbytes, z.nbytes)
    check("device", str(g.device), "cpu")
    assert not problems, f"{target}: " + "; ".join(problems)


def _windows(shape, chunks, count=3):
    """`count` same-shape windows at different offsets (the last one ends at the array's end)."""
    w = tuple(min(s, c + 1) for s, c in zip(shape, chunks))
    sels = []
    for k in range(count):
        start = tuple((s - ww) * k // max(count - 1, 1) for s, ww in zip(shape, w))
        sels.append(tuple(slice(a, a + ww) for a, ww in zip(start, w)))
    return sels


BATCH_TARGETS = [t for t in TARGETS if "0d" not in BY_NAME.get(t.split("/")[0]).tags]


@pytest.mark.parametrize("target", BATCH_TARGETS)
def test_read_batch_stacks_windows(corpus, target):
    z = corpus.zarr_array(target)
    if z.ndim == 0 or 0 in z.shape:
        pytest.skip("no windows in an empty or 0-d array")
    g = gz_array(corpus, target)
    sels = _windows(z.shape, z.chunks)
    batch = g.read_batch(sels)
    assert isinstance(batch, np.ndarray)
    singles = [g[s] for s in sels]
    refs = stack([reference_read(z, s) for s in sels])
    assert_identical(batch, refs, f"{target}.read_batch({sels!r})")
    assert_identical(batch, stack(singles), f"{target}.read_batch vs single reads")


def test_read_batch_strided_and_negative_windows(corpus):
    z = corpus.zarr_array("zp3_shard_end")
    g = gz_array(corpus, "zp3_shard_end")
    sels = [np.s_[0:10:2, 3:9], np.s_[20:10:-2, 40:34:-1], (slice(1, 11, 2), slice(30, 36))]
    batch = g.read_batch(sels)
    assert_identical(batch, stack([reference_read(z, s) for s in sels]), f"read_batch({sels!r})")


def test_read_batch_empty_list(corpus):
    g = gz_array(corpus, "zp3_dtype_int32")
    try:
        out = g.read_batch([])
    except (ValueError, gpuzarr.GpuzarrError):
        return  # refusing an empty batch clearly is fine
    assert np.asarray(out).shape[0] == 0


OUT_TARGETS = ["zp3_dtype_float64", "zp3_shard_end", "zp3_shard_nested", "zp2_order_F", "zp2_dtype_be_f8",
               "ts3_shard_start", "ts2_blosc_zstd_shuffle2", "zp3_fill_nan_missing", "zp3_transpose_201",
               "zp3_0d_int32", "zp3_dtype_structured"]


@pytest.mark.parametrize("target", OUT_TARGETS)
@pytest.mark.parametrize("label", ["full", "window", "negstep"])
def test_read_into_out(corpus, target, label):
    z, sel = _selection(corpus, target, label)
    ref = reference_read(z, sel)
    g = gz_array(corpus, target)
    out = np.full(ref.shape, 0, dtype=ref.dtype) if ref.dtype.fields is None else np.zeros(ref.shape, ref.dtype)
    res = g.read(sel, out=out)
    assert_identical(out, ref, f"{target}.read({sel!r}, out=...) content of out")
    if res is not None:
        assert np.shares_memory(res, out) or res is out, "read(out=...) returned an array other than out"


@pytest.mark.parametrize("sel", [np.s_[29], np.s_[-30], np.s_[0, 31], np.s_[..., -32], np.s_[1, 2, 3]],
                         ids=["row_past_end", "row_before_start", "col_past_end", "ellipsis_col", "too_many"])
def test_out_of_bounds_index_raises_index_error(corpus, sel):
    """As NumPy: an integer index outside the array, or more indices than dimensions, is an IndexError."""
    g = gz_array(corpus, "zp3_dtype_int32")  # shape (29, 31)
    with pytest.raises(IndexError):
        g[sel]


@pytest.mark.parametrize("sel", [np.s_[::2**63], np.s_[::-(2**63) - 1], np.s_[5:2:2**64], np.s_[:, 1::2**70],
                                 np.s_[3::2**64, 2:9:2**63], np.s_[2**63::-2**63, ::-(2**64)]],
                         ids=["step_2_63", "step_minus_2_63_minus_1", "empty_step_2_64", "col_step_2_70",
                              "both_positive", "both_negative"])
def test_steps_beyond_int64(corpus, sel):
    """A Python slice takes any integer step; one of 2**63 or more (either sign) selects at most one
    element per axis. NumPy and zarr-python (positive steps) answer these; nothing overflows."""
    z = corpus.zarr_array("zp3_shard_end")
    g = gz_array(corpus, "zp3_shard_end")
    ref = reference_read(z, sel)
    assert_identical(g[sel], ref, f"[{sel!r}]")
    assert_identical(g.read_batch([sel, sel]), stack([ref, ref]), f"read_batch([{sel!r}] * 2)")


@pytest.mark.parametrize("sel", [True, False, (0, True), (slice(None), False), (Ellipsis, True), (-1, ..., True),
                                 np.True_, (1, np.False_), (np.array(True),)],
                         ids=["true", "false", "int_true", "slice_false", "ellipsis_true", "int_ellipsis_true",
                              "numpy_true", "int_numpy_false", "0d_bool_array"])
def test_bool_is_not_an_integer_index(corpus, sel):
    """Python's True is also the integer 1, but as an index a bool is no integer: NumPy reads it as a
    0-d mask (a new axis of length 1 or 0), zarr-python refuses it (IndexError). Reading True as
    row 1 and False as row 0 is wrong either way."""
    z = corpus.zarr_array("zp3_shard_end")
    g = gz_array(corpus, "zp3_shard_end")
    full = np.asarray(z[...])
    for what, read, want in [("read", lambda: g[sel], lambda: full[sel]),
                             ("read_batch", lambda: g.read_batch([sel, sel]), lambda: stack([full[sel]] * 2))]:
        try:
            got = read()
        except IndexError:
            continue  # refusing it, as zarr-python does, is fine
        assert_identical(got, want(), f"{what} [{sel!r}] (a bool index is a 0-d mask in NumPy)")


def test_read_device_cpu_equals_getitem(corpus):
    g = gz_array(corpus, "zp3_shard_start")
    sel = np.s_[3:17, 5:33]
    assert_identical(g.read(sel, device="cpu"), g[sel])
    assert_identical(g.read(sel), g[sel])


# ----------------------------------------------------------------------------------------------
# Groups


@pytest.mark.parametrize("case", GROUP_CASES, ids=str)
def test_group_structure(corpus, case):
    import zarr

    path = corpus.path(case.name)
    grp = gpuzarr.open(str(path), device="cpu")
    zg = zarr.open_group(str(path), mode="r")
    assert isinstance(grp, gpuzarr.Group)
    assert sorted(grp.keys()) == sorted(zg.keys())
    assert sorted(grp) == sorted(zg.keys()), "iterating a group yields its member names"
    assert dict(grp.attrs) == zg.attrs.asdict()
    for sub in ("sub", "sub/deeper", "sub/deeper/deepest", "empty"):
        node = grp[sub]
        assert isinstance(node, gpuzarr.Group), sub
        assert dict(node.attrs) == zg[sub].attrs.asdict(), sub
        assert sorted(node.keys()) == sorted(zg[sub].keys()), sub
    # nested access, both "a/b" and step by step
    assert isinstance(grp["sub"]["deeper"]["c"], gpuzarr.Array)
    assert sorted(grp["sub/deeper"].keys()) == ["c", "deepest", "s"]
    expected = case.expected()
    for member in GROUP_MEMBERS:
        arr = grp[member]
        assert isinstance(arr, gpuzarr.Array), member
        assert dict(arr.attrs) == {"member": member}
        assert_identical(arr[...], reference_read(zg[member], ...), f"{case.name}/{member}")
        assert_identical(arr[...], expected[member], f"{case.name}/{member} vs source")
    with pytest.raises((KeyError, gpuzarr.GpuzarrError)):
        grp["no_such_member"]


def _copy_to_memory(local: Path) -> str:
    """Copy a directory tree into fsspec's memory filesystem; returns its memory:// URL."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/gpuzarr-tests/{uuid.uuid4().hex}"
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe(f"{root}/{p.relative_to(local).as_posix()}", p.read_bytes())
    return f"memory://{root}"


@pytest.mark.parametrize("case", [c for c in GROUP_CASES if "consolidated" in c.tags], ids=str)
def test_consolidated_metadata_is_used(corpus, case, tmp_path):
    """With consolidated metadata, members open from it: delete their own metadata documents and
    everything still opens and reads (zarr-python's consolidated open does the same)."""
    import zarr

    local = tmp_path / case.name
    shutil.copytree(corpus.path(case.name), local)
    removed = 0
    for p in list(local.rglob("*")):
        if p.parent != local and p.name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"):
            p.unlink()
            removed += 1
    assert removed
    zg = zarr.open_consolidated(str(local), mode="r", zarr_format=3 if case.writer.endswith("v3") else 2)
    grp = gpuzarr.open(str(local), device="cpu")
    assert sorted(grp.keys()) == sorted(zg.keys())
    for member in GROUP_MEMBERS:
        arr = grp[member]
        assert dict(arr.attrs) == {"member": member}
        assert_identical(arr[...], zg[member][...], f"{case.name}/{member} (consolidated)")
    assert dict(grp["sub"].attrs) == {"level": 1}
    assert dict(grp["sub/deeper/deepest"].attrs) == {"leaf": True}


# ----------------------------------------------------------------------------------------------
# Store forms

STORE_TARGETS = ["zp3_shard_start", "zp2_order_F_3d_blosc", "ts3_shard_nested", "zp3_dtype_string"]


@pytest.mark.parametrize("target", STORE_TARGETS)
@pytest.mark.parametrize("form", ["pathlib", "file_url", "fsspec_mapper", "fsspec_filesystem", "memory_url",
                                  "memory_mapper", "store_plus_path"])
def test_open_store_forms(corpus, target, form):
    import fsspec

    path = corpus.path(target)
    if form == "pathlib":
        arr = gpuzarr.open(Path(path), device="cpu")
    elif form == "file_url":
        arr = gpuzarr.open(path.as_uri(), device="cpu")
    elif form == "fsspec_mapper":
        arr = gpuzarr.open(fsspec.get_mapper(str(path)), device="cpu")
    elif form == "fsspec_filesystem":
        arr = gpuzarr.open(fsspec.filesystem("file"), path=str(path), device="cpu")
    elif form == "memory_url":
        arr = gpuzarr.open(_copy_to_memory(path), device="cpu")
    elif form == "memory_mapper":
        arr = gpuzarr.open(fsspec.get_mapper(_copy_to_memory(path)), device="cpu")
    else:
        arr = gpuzarr.open(str(corpus.root), path=target, device="cpu")
    assert isinstance(arr, gpuzarr.Array)
    z = corpus.zarr_array(target)
    for sel in (..., selections(z.shape, z.chunks, z.shards)["window"]):
        assert_identical(arr[sel], reference_read(z, sel), f"{form} {target}[{sel!r}]")


def test_open_group_member_via_path(corpus):
    arr = gpuzarr.open(str(corpus.path("zp3_group_consolidated")), path="sub/b", device="cpu")
    assert_identical(arr[...], corpus.zarr_array("zp3_group_consolidated/sub/b")[...])


def test_open_group_from_memory_url(corpus):
    url = _copy_to_memory(corpus.path("zp2_group_consolidated"))
    grp = gpuzarr.open(url, device="cpu")
    assert isinstance(grp, gpuzarr.Group)
    assert_identical(grp["sub/deeper/c"][1:, ::2], corpus.zarr_array("zp2_group_consolidated/sub/deeper/c")[1:, ::2])


def test_open_missing_node_raises(tmp_path):
    with pytest.raises(gpuzarr.GpuzarrError):
        gpuzarr.open(str(tmp_path / "nothing_here"), device="cpu")


def test_source_data_is_deterministic():
    a = make_data((5, 7), np.dtype("<f8"), 123)
    b = make_data.__wrapped__((5, 7), np.dtype("<f8"), 123)
    assert a.tobytes() == b.tobytes()
