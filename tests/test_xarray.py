"""engine="gpuzarr" against engine="zarr": the same datasets (values, coordinates, attributes, CF
decoding, encodings), lazily read, for Zarr v2 and v3 stores that xarray itself wrote."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from gpuzarr.pipeline import Reader  # noqa: E402
from gpuzarr.xarray_backend import GpuzarrBackendArray, GpuzarrBackendEntrypoint  # noqa: E402

FORMATS = [2, 3]
ZARR_CODEC_ENCODINGS = {"compressors", "filters", "serializer"}  # zarr-python objects gpuzarr does not build


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    temp = rng.normal(280, 5, (6, 7, 8)).astype("f4")
    temp[0, 0, 0] = np.nan
    precip = rng.uniform(0, 10, (6, 7, 8))
    precip[0, 1, 1] = np.nan
    ds = xr.Dataset(
        {"temp": (("time", "y", "x"), temp, {"units": "K", "long_name": "temperature"}),
         "precip": (("time", "y", "x"), precip),
         "count": (("y", "x"), rng.integers(0, 100, (7, 8)).astype("i4")),
         "lag": ("time", pd.to_timedelta(np.arange(6), "h")),
         "name": ("x", np.array(["a", "bb", "", "ccc", "d", "e", "f", "g"], dtype=object)),
         "level": ((), 850.0)},
        coords={"time": pd.date_range("2020-01-01", periods=6, freq="D"), "y": np.arange(7) * 10.0,
                "x": np.arange(8), "station": ("y", np.array([f"s{i}" for i in range(7)]))},
        attrs={"title": "test", "version": 3, "history": [1, 2]})
    ds["precip"].encoding = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 1.0, "_FillValue": -9999}
    return ds


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """Per format: a consolidated store with the dataset at the root and (its x-half) at a/b, a
    sharded one, and one without consolidated metadata."""
    root = tmp_path_factory.mktemp("xarray")
    ds, out = _dataset(), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python: unstable v3 string types, v3 consolidated metadata
        for fmt in FORMATS:
            plain, sharded, loose = root / f"v{fmt}.zarr", root / f"v{fmt}-sharded.zarr", root / f"v{fmt}-loose.zarr"
            ds.to_zarr(plain, zarr_format=fmt, encoding={"temp": {"chunks": (2, 3, 4)}}, consolidated=False)
            ds.isel(x=slice(0, 4)).to_zarr(plain, group="a/b", zarr_format=fmt, consolidated=False)
            zarr.consolidate_metadata(str(plain))
            ds.to_zarr(loose, zarr_format=fmt, consolidated=False)
            if fmt == 3:
                ds.to_zarr(sharded, zarr_format=3, encoding={"temp": {"chunks": (1, 3, 4), "shards": (2, 6, 8)}})
            out[fmt] = {"plain": plain, "loose": loose, "sharded": sharded if fmt == 3 else None}
    return out


def _open_both(path, **kwargs) -> tuple[xr.Dataset, xr.Dataset]:
    return xr.open_dataset(path, engine="gpuzarr", **kwargs), xr.open_dataset(path, engine="zarr", **kwargs)


def _same_encodings(ours: xr.Dataset, theirs: xr.Dataset) -> None:
    for name, var in theirs.variables.items():
        expected = {k: v for k, v in var.encoding.items() if k not in ZARR_CODEC_ENCODINGS}
        got = ours[name].encoding
        assert set(got) == set(expected), name
        for key, value in expected.items():
            assert got[key] == value or (got[key] != got[key] and value != value), (name, key)  # NaN fills


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kwargs", [{}, {"mask_and_scale": False}, {"decode_times": False},
                                    {"decode_coords": False, "concat_characters": False}],
                         ids=["default", "raw-mask", "raw-times", "raw-coords"])
def test_identical_to_zarr_engine(stores, fmt, kwargs):
    ours, theirs = _open_both(stores[fmt]["plain"], **kwargs)
    xr.testing.assert_identical(ours, theirs)
    for name in theirs.variables:
        assert ours[name].dtype == theirs[name].dtype, name
    _same_encodings(ours, theirs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cf_decoding(stores, fmt):
    ds = xr.open_dataset(stores[fmt]["plain"], engine="gpuzarr").load()
    assert ds.precip.dtype == np.float64 and np.isnan(ds.precip[0, 1, 1])
    assert ds.precip.encoding["_FillValue"] == -9999 and ds.precip.encoding["scale_factor"] == 0.01
    assert ds.time.dtype.kind == "M" and ds.lag.dtype.kind == "m"
    assert ds.station.dtype.kind == "U" and "station" in ds.coords
    assert ds.name.values.tolist() == ["a", "bb", "", "ccc", "d", "e", "f", "g"]
    assert ds.temp.encoding["preferred_chunks"] == {"time": 2, "y": 3, "x": 4}
    assert ds.attrs == {"title": "test", "version": 3, "history": [1, 2]}


def test_sharded_v3(stores):
    ours, theirs = _open_both(stores[3]["sharded"])
    xr.testing.assert_identical(ours, theirs)
    assert ours.temp.encoding["chunks"] == (1, 3, 4) and ours.temp.encoding["shards"] == (2, 6, 8)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("consolidated", [None, True, False])
def test_groups_and_consolidation(stores, fmt, consolidated):
    for group in ("a/b", "/a/b/"):
        ours, theirs = _open_both(stores[fmt]["plain"], group=group, consolidated=consolidated)
        xr.testing.assert_identical(ours, theirs)
        assert ours.sizes["x"] == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_unconsolidated_store(stores, fmt):
    ours, theirs = _open_both(stores[fmt]["loose"], consolidated=False)
    xr.testing.assert_identical(ours, theirs)
    xr.testing.assert_identical(xr.open_dataset(stores[fmt]["loose"], engine="gpuzarr"), theirs)
    with pytest.raises(gpuzarr.MetadataError, match="consolidated"):
        xr.open_dataset(stores[fmt]["loose"], engine="gpuzarr", consolidated=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_drop_variables(stores, fmt):
    ours, theirs = _open_both(stores[fmt]["plain"], drop_variables=["temp", "y", "station"])
    xr.testing.assert_identical(ours, theirs)
    assert "temp" not in ours and "y" not in ours.coords


@pytest.fixture
def reads(monkeypatch) -> list:
    """The store URL of every array gpuzarr reads from."""
    seen: list = []
    original = Reader.read

    def spy(self, *args, **kwargs):
        seen.append(self.store.url.rstrip("/").rsplit("/", 1)[-1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Reader, "read", spy)
    return seen


@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy(stores, fmt, reads):
    ds = xr.open_dataset(stores[fmt]["plain"], engine="gpuzarr")
    assert set(reads) <= {"time", "x", "y"}  # xarray loads dimension coordinates into its indexes
    reads.clear()
    ds.temp.isel(time=0).values
    assert reads == ["temp"]
    ds.load()
    assert "precip" in reads and "name" in reads


@pytest.mark.parametrize("fmt", FORMATS)
def test_outer_and_vectorized_indexing(stores, fmt, reads):
    ours, theirs = _open_both(stores[fmt]["plain"])
    p, q = xr.DataArray([1, 6, 3], dims="p"), xr.DataArray([0, 7, 7], dims="p")
    grid = xr.DataArray([[5, 0], [2, 2]], dims=("p", "q"))
    selections = [dict(x=[7, 1, 1, 0]), dict(time=0, x=[5, 2], y=slice(None, None, -2)),
                  dict(y=p, x=q),  # index arrays after a slice: xarray puts their axis first
                  dict(time=p.clip(0, 5), x=q), dict(time=grid, x=grid + 1)]
    for sel in selections:
        reads.clear()
        got = ours.temp.isel(**sel).load()
        assert reads.count("temp") == 1, sel  # one batched read, not one per point
        xr.testing.assert_identical(got, theirs.temp.isel(**sel).load())
        xr.testing.assert_identical(ours.isel(**sel).load(), theirs.isel(**sel).load())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chunks", [{}, {"time": 1, "x": 5}])
@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_dask_chunks(stores, fmt, chunks):
    ours, theirs = _open_both(stores[fmt]["plain"], chunks=chunks)
    assert type(ours.temp.data).__module__.startswith("dask")
    assert ours.temp.chunks == theirs.temp.chunks
    xr.testing.assert_identical(ours, theirs)
    xr.testing.assert_identical(ours.compute(), theirs.compute())


def test_gpu_mode_on_a_standin_device(stores):
    """device="gpu" logic on the CPU: the GPU orchestration with NumPy in place of CUDA
    (tests/gpu_standin.py) reads the data variables whose decoding runs on device arrays."""
    from gpu_standin import StandinEngine

    from gpuzarr.devices.gpu import GpuDevice

    ours = xr.open_dataset(stores[3]["plain"], engine="gpuzarr", device=GpuDevice(StandinEngine()))
    on = {name for name, var in ours.data_vars.items() if _backend(var.variable)._array.device == "gpu"}
    assert on == {"temp", "precip", "count", "level"}  # lag decodes as times, name as strings
    assert all(_backend(ours[c].variable)._array.device == "cpu" for c in ("station",))
    xr.testing.assert_identical(ours.load(), xr.open_dataset(stores[3]["plain"], engine="zarr").load())


def _backend(variable: xr.Variable) -> GpuzarrBackendArray:
    data = variable._data
    while not isinstance(data, GpuzarrBackendArray):
        data = data.array
    return data


def test_never_guesses(stores):
    entry = GpuzarrBackendEntrypoint()
    assert not entry.guess_can_open(str(stores[3]["plain"])) and not entry.guess_can_open(stores[2]["plain"])
    assert "gpuzarr" in xr.backends.list_engines()
    assert xr.backends.plugins.guess_engine(str(stores[3]["plain"])) == "zarr"
    assert {"group", "consolidated", "device", "storage_options", "drop_variables"} <= set(
        entry.open_dataset_parameters)


def test_missing_store_and_group(stores, tmp_path):
    missing = tmp_path / "nowhere.zarr"
    with pytest.raises(FileNotFoundError, match="nowhere.zarr") as info:
        xr.open_dataset(missing, engine="gpuzarr")
    assert isinstance(info.value, gpuzarr.GpuzarrError)
    with pytest.raises(FileNotFoundError, match="a/nope"):
        xr.open_dataset(stores[3]["plain"], engine="gpuzarr", group="a/nope")
    with pytest.raises(FileNotFoundError, match="not a group"):
        xr.open_dataset(stores[3]["plain"], engine="gpuzarr", group="temp")


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_engines_other_arguments(tmp_path, fmt):
    """engine="zarr"'s zarr_format, use_zarr_fill_value_as_mask and cache_members are taken: the
    format checked, the mask as xarray documents it (its zarr engine ignores the argument in
    open_dataset; open_zarr's docs say False leaves the zarr fill_value unmasked)."""
    root = zarr.open_group(tmp_path / "f.zarr", mode="w", zarr_format=fmt)
    dims = {"dimension_names": ["x"]} if fmt == 3 else {"attributes": {"_ARRAY_DIMENSIONS": ["x"]}}
    root.create_array("v", shape=(4,), chunks=(2,), dtype="f4", fill_value=5.0, **dims)[:2] = [1, 2]
    path = tmp_path / "f.zarr"
    default = [1, 2, np.nan, np.nan] if fmt == 2 else [1, 2, 5, 5]  # v2: the fill value masks
    for mask, want in ((None, default), (True, [1, 2, np.nan, np.nan]), (False, [1, 2, 5, 5])):
        got = xr.open_dataset(path, engine="gpuzarr", zarr_format=fmt, use_zarr_fill_value_as_mask=mask,
                              cache_members=False)
        np.testing.assert_array_equal(got.v.values, np.array(want, "f4"), err_msg=f"use_zarr_fill_value_as_mask={mask}")
    # as xarray's ZarrStore with the flag: the fill value in the encoding for v3 only (v2 writes
    # it from _FillValue: pydata/xarray#10269)
    unmasked = xr.open_dataset(path, engine="gpuzarr", use_zarr_fill_value_as_mask=False)
    assert ("fill_value" in unmasked.v.encoding) is (fmt == 3)
    unmasked.to_zarr(tmp_path / "again.zarr", zarr_format=fmt, consolidated=False)
    xr.testing.assert_identical(xr.open_dataset(path, engine="gpuzarr", zarr_format=fmt),
                                xr.open_dataset(path, engine="zarr", zarr_format=fmt))
    with pytest.raises(FileNotFoundError, match=f"a Zarr v{fmt} group, not the v{5 - fmt} one") as info:
        xr.open_dataset(path, engine="gpuzarr", zarr_format=5 - fmt)
    assert isinstance(info.value, gpuzarr.GpuzarrError)
    with pytest.raises(gpuzarr.SettingsError, match="zarr_format must be 2, 3 or None, not 4"):
        xr.open_dataset(path, engine="gpuzarr", zarr_format=4)


def test_v2_array_without_dimension_names(tmp_path):
    root = zarr.open_group(tmp_path / "bare.zarr", mode="w", zarr_format=2)
    root.create_array("a", shape=(3,), dtype="i4")
    with pytest.raises(gpuzarr.MetadataError, match="_ARRAY_DIMENSIONS"):
        xr.open_dataset(tmp_path / "bare.zarr", engine="gpuzarr")


@pytest.mark.gpu
def test_gpu_reads_cupy(stores):
    from gpuzarr.devices.gpu import usable_gpu

    ok, why = usable_gpu()
    if not ok:
        pytest.skip(why)
    import cupy

    for fmt in FORMATS:
        ours = xr.open_dataset(stores[fmt]["plain"], engine="gpuzarr", device="gpu").load()
        theirs = xr.open_dataset(stores[fmt]["plain"], engine="zarr").load()
        assert all(isinstance(ours[v].data, cupy.ndarray) for v in ("temp", "precip", "count"))
        assert isinstance(ours.x.data, np.ndarray) and isinstance(ours.lag.data, np.ndarray)
        xr.testing.assert_identical(ours.as_numpy(), theirs)
        sel = dict(y=xr.DataArray([1, 6, 3], dims="p"), x=xr.DataArray([0, 7, 7], dims="p"))
        picked = xr.open_dataset(stores[fmt]["plain"], engine="gpuzarr", device="gpu").temp.isel(**sel).load()
        xr.testing.assert_identical(picked.as_numpy(), theirs.temp.isel(**sel))
