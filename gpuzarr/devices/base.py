"""The device protocol and device selection."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from ..codecs.chain import CodecChain
from ..fetch import FetchedBatch, PendingBatch
from ..plan import Plan


class Device(Protocol):
    name: str
    xp: Any  # the array namespace outputs live in
    batch_bytes: int  # preferred compressed bytes per batch
    reads_in_tasks: bool  # local reads come as PendingBatch, read by the decoding tasks themselves

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised output array on this device."""

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        """Raise ValueError/TypeError unless `out` can receive a read of this shape and dtype."""

    def decode_and_place(self, batch: FetchedBatch | PendingBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any, report: Any, sole: bool = False) -> list:
        """Decode every chunk of `batch` (plan chunks first..first+batch.n-1) and place it in `out`;
        count codec calls and kernel launches in `report` (a ReadReport). `sole`: the batch is the
        whole read, so the calling thread has nothing else to do. Returns the futures of work still
        running (empty if none): the caller waits on them, or settle()s them, before the read ends."""

    def finish(self) -> None:
        """Called once the last batch of a read is placed: raise deferred errors (GPU sizes)."""

    def abort(self) -> None:
        """Called when a read fails: drop what finish() would have checked."""


def settle(futures: list) -> None:
    """Cancel the tasks not started; wait for the others, ignoring their errors (one is raised)."""
    for future in futures:
        future.cancel()
    for future in futures:
        if not future.cancelled():
            future.exception()


_gpu_lock = threading.Lock()
_gpu_devices: dict[int, Any] = {}


def get_device(name: str | Device) -> Device:
    """'cpu', 'gpu' or 'auto' (the GPU when CuPy finds a usable one, else the CPU)."""
    if not isinstance(name, str):
        return name
    if name == "cpu":
        from .cpu import CpuDevice

        return CpuDevice.shared()
    if name in ("gpu", "cuda"):
        return _gpu_device()
    if name == "auto":
        from .gpu import usable_gpu

        return AutoDevice(_gpu_device(), get_device("cpu")) if usable_gpu()[0] else get_device("cpu")
    raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', not {name!r}")


def _gpu_device() -> Device:
    from ..errors import UnsupportedFeatureError
    from .gpu import CupyEngine, GpuDevice, usable_gpu

    ok, why = usable_gpu()
    if not ok:
        raise UnsupportedFeatureError(f"device='gpu' is not available: {why}")
    import cupy

    device_id = cupy.cuda.runtime.getDevice()
    with _gpu_lock:
        if device_id not in _gpu_devices:
            _gpu_devices[device_id] = GpuDevice(CupyEngine(device_id))
        return _gpu_devices[device_id]


class AutoDevice:
    """device="auto" with a GPU: reads whose compressed bytes are below `cpu_below` decode on the
    CPU and are copied up once (a GPU batch has a fixed cost that small reads do not repay)."""

    name = "gpu"
    reads_in_tasks = False  # resolved to the GPU or the CPU device before any batch is read

    def __init__(self, gpu: Device, cpu: Device, cpu_below: int = 1 << 20):
        self.gpu, self.cpu, self.cpu_below = gpu, cpu, cpu_below
        self.xp = gpu.xp
        self.batch_bytes = gpu.batch_bytes

    def choose(self, compressed_bytes: int) -> Device:
        return self.cpu if compressed_bytes < self.cpu_below else self.gpu

    def upload(self, host: Any, out: Any) -> Any:
        native = host.astype(host.dtype.newbyteorder("="), copy=False)  # CuPy has native dtypes only
        if out is None:
            return self.xp.asarray(native)
        out.set(native)
        return out

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.gpu.empty(shape, dtype)

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        self.gpu.check_output(out, shape, dtype)
