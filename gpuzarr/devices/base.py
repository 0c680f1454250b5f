"""The device protocol and device selection."""

from __future__ import annotations

from typing import Any, Protocol

from ..codecs.chain import CodecChain
from ..fetch import FetchedBatch
from ..plan import Plan


class Device(Protocol):
    name: str
    xp: Any  # the array namespace outputs live in
    batch_bytes: int  # preferred compressed bytes per batch

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised output array on this device."""

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        """Raise ValueError/TypeError unless `out` can receive a read of this shape and dtype."""

    def decode_and_place(self, batch: FetchedBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any) -> None:
        """Decode every chunk of `batch` (plan chunks first..first+batch.n-1) and place it in `out`."""


def get_device(name: str | Device) -> Device:
    """'cpu', 'gpu' or 'auto' (the GPU when CuPy finds a usable one, else the CPU)."""
    if not isinstance(name, str):
        return name
    if name == "cpu":
        from .cpu import CpuDevice

        return CpuDevice.shared()
    if name in ("gpu", "cuda"):
        from ..errors import UnsupportedFeatureError

        raise UnsupportedFeatureError("the GPU device is not available in this build; use device='cpu'")
    if name == "auto":
        return get_device("cpu")
    raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', not {name!r}")
