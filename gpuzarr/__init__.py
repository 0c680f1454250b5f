"""gpuzarr: read Zarr v2/v3 arrays (sharding included) in batches, decoded on the GPU into CuPy
arrays or on every CPU core into NumPy arrays, bit-identical either way."""

from .api import open
from .array import Array
from .errors import (
    CorruptDataError,
    DeadlineError,
    DeviceMemoryError,
    GpuzarrError,
    MetadataError,
    SettingsError,
    StoreError,
    UnsupportedFeatureError,
)
from .group import Group
from .pipeline import Settings
from .report import ReadReport

__version__ = "0.1.0"

_INTEGRATIONS = {"CodecPipeline": "zarr_pipeline", "to_dask": "dask_array"}


def __getattr__(name: str):
    """The integrations load on first use: `import gpuzarr` imports none of zarr-python or dask."""
    if name in _INTEGRATIONS:
        from importlib import import_module

        return getattr(import_module(f".{_INTEGRATIONS[name]}", __name__), name)
    raise AttributeError(f"module 'gpuzarr' has no attribute {name!r}")


__all__ = ["open", "Array", "Group", "ReadReport", "Settings", "GpuzarrError", "MetadataError", "CorruptDataError",
           "UnsupportedFeatureError", "StoreError", "DeadlineError", "SettingsError", "DeviceMemoryError",
           "CodecPipeline", "to_dask", "__version__"]
