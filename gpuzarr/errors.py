"""gpuzarr's error hierarchy: failures of the data, the store, metadata and settings. Mistakes in
a call (a group member that does not exist, a bad index, device or `out`) raise Python's own
KeyError, IndexError, ValueError or TypeError, as NumPy and dicts do."""

from __future__ import annotations


class GpuzarrError(Exception):
    """Base class of every error gpuzarr raises on purpose."""


class MetadataError(GpuzarrError, ValueError):
    """Array or group metadata is malformed, missing, or inconsistent."""


class UnsupportedFeatureError(GpuzarrError, NotImplementedError):
    """Well-formed metadata asks for a codec, dtype, grid or extension gpuzarr does not read."""


class CorruptDataError(GpuzarrError, ValueError):
    """Stored bytes contradict the metadata: bad checksum, truncated or inconsistent shard index,
    a frame that does not decode to the chunk size."""


class SettingsError(GpuzarrError, ValueError):
    """A setting (a `Settings` field, a device's thread count, an environment variable) is invalid."""


class DeviceMemoryError(GpuzarrError, MemoryError):
    """A device (the GPU for a batch, the CPU for one chunk's decode buffer) ran out of memory:
    smaller batches (Settings) or chunks fit; the data is not at fault."""


class StoreError(GpuzarrError, OSError):
    """The store failed to read a key; carries the key and the underlying error."""

    def __init__(self, message: str, key: str | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.key = key
        self.cause = cause


def claim_error(what: str, claimed: int, expected: int) -> CorruptDataError:
    """A frame whose header states another decoded size than the chunk's, refused before it is
    decoded: the size is the header's claim, not what decoding gave."""
    return CorruptDataError(f"{what} header says it decodes to {claimed} bytes, the chunk needs {expected}")


class DeadlineError(StoreError):
    """A read was still fetching when its `Settings.deadline_seconds` ran out: it stopped waiting
    for the store (a hung request) and issued nothing more; the message names the array and how
    long the read ran."""
