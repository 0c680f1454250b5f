"""gpuzarr: read Zarr v2/v3 arrays (sharding included) in batches, decoded on the GPU into CuPy
arrays or on every CPU core into NumPy arrays, bit-identical either way."""

from .api import open
from .array import Array
from .errors import (
    CorruptDataError,
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
__all__ = ["open", "Array", "Group", "ReadReport", "Settings", "GpuzarrError", "MetadataError", "CorruptDataError",
           "UnsupportedFeatureError", "StoreError", "SettingsError", "DeviceMemoryError",
           "__version__"]
