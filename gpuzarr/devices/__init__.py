"""Devices decode whole batches of fetched chunks and place them into the output.

The boundary is deliberately small (`Device` in base.py): the CPU device implements it with a
thread pool and NumPy, the GPU device with nvCOMP and CuPy."""

from .base import Device, get_device

__all__ = ["Device", "get_device"]
