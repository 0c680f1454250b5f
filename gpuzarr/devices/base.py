"""The device protocol and device selection."""

from __future__ import annotations

from typing import Any, Protocol

from .. import forksafe
from ..codecs.array_to_array import NumcodecsArray
from ..codecs.chain import CodecChain
from ..errors import UnsupportedFeatureError
from ..fetch import FetchedBatch, PendingBatch
from ..plan import Plan
from .kernels import SCATTER_MAX_NDIM


class Device(Protocol):
    name: str
    xp: Any  # the array namespace outputs live in
    batch_bytes: int  # preferred compressed bytes per batch
    batch_streams: int  # and the fewest chunks a batch should hold where the read has them
    reads_in_tasks: bool  # local reads come as PendingBatch, read by the decoding tasks themselves
    staging_alloc: Any  # None, or alloc(nbytes) -> (buffer, token): the staging the device consumes,
    #                     the calling thread's (a fetch ahead on another thread allocates from it)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised output array on this device."""

    def staging_align(self, chain: CodecChain) -> int:
        """Where each chunk of a staged local read of this chain starts (a multiple of this)."""

    def takes_landed(self, n: int, chain: CodecChain) -> bool:
        """Whether a remote batch of n chunks may come range by range, as its requests land
        (fetch.Landing), decoded while later ranges are on their way."""

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


_gpu_lock = forksafe.Lock()
_gpu_devices: dict[int, Any] = {}
_cuda = {"used": False, "forked": False}  # CUDA initialised here / in the parent before a fork


@forksafe.call_in_child
def _forget_gpu() -> None:
    """CUDA does not survive fork(): a child of a process that used it must not touch it."""
    _gpu_devices.clear()
    _cuda["forked"] = _cuda["forked"] or _cuda["used"]


def check_gpu_usable() -> None:
    """Raise, saying what to do, in a forked child of a process that used CUDA (CUDA calls there
    fail or hang)."""
    if _cuda["forked"]:
        raise UnsupportedFeatureError(
            "the GPU cannot be used in a process forked after CUDA was initialised (CUDA does not "
            "survive fork): start workers with the 'spawn' or 'forkserver' multiprocessing start "
            "method (DataLoader(..., multiprocessing_context='spawn')), or read with device='cpu'")


def gpu_refusal(chain: CodecChain) -> str | None:
    """Why the GPU cannot decode or place an array's chunks, or None where it can."""
    if chain.raw_nbytes is None or any(isinstance(c, NumcodecsArray) for c in chain.array_to_array):
        return "variable-length data, sharding inside other codecs and numcodecs array filters are decoded on the CPU only"
    if len(chain.shape) > SCATTER_MAX_NDIM:  # the placement kernel's records hold that many
        return f"arrays of more than {SCATTER_MAX_NDIM} dimensions (this one has {len(chain.shape)}) are placed on the CPU only"
    return None


def check_gpu_chain(chain: CodecChain) -> None:
    """Raise where the GPU cannot decode or place an array's chunks: for every selection, an
    empty one too, so that whether a read works does not hang on what it selects."""
    why = gpu_refusal(chain)
    if why is not None:
        raise UnsupportedFeatureError(f"{why} (device='cpu', or 'auto': decoded on the CPU, copied to the GPU)")


def get_device(name: str | Device, threads: int | None = None) -> Device:
    """'cpu', 'gpu' or 'auto' (the GPU when CuPy finds a usable one, else the CPU); `threads`
    sizes the CPU device's pool (None: its default)."""
    if not isinstance(name, str):
        return name
    if name == "cpu":
        from .cpu import CpuDevice

        return CpuDevice.shared(threads)
    if name in ("gpu", "cuda"):
        return _gpu_device()
    if name == "auto":
        from .gpu import usable_gpu

        check_gpu_usable()
        if usable_gpu()[0]:
            return AutoDevice(_gpu_device(), get_device("cpu", threads))
        return get_device("cpu", threads)
    raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', not {name!r}")


def _gpu_device() -> Device:
    from .gpu import CupyEngine, GpuDevice, usable_gpu

    check_gpu_usable()
    ok, why = usable_gpu()
    if not ok:
        raise UnsupportedFeatureError(f"device='gpu' is not available: {why}")
    _cuda["used"] = True
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
    staging_alloc = None  # likewise

    def staging_align(self, chain: CodecChain) -> int:
        return 1

    def takes_landed(self, n: int, chain: CodecChain) -> bool:
        return False

    def __init__(self, gpu: Device, cpu: Device, cpu_below: int = 1 << 20):
        self.gpu, self.cpu, self.cpu_below = gpu, cpu, cpu_below
        self.xp = gpu.xp
        self.batch_bytes = gpu.batch_bytes

    def __reduce__(self) -> tuple:
        return get_device, ("auto", getattr(self.cpu, "_requested", None))

    def choose(self, compressed_bytes: int) -> Device:
        return self.cpu if compressed_bytes < self.cpu_below else self.gpu

    def upload(self, host: Any, out: Any) -> Any:
        from .gpu import gpu_dtype

        gpu_dtype(host.dtype)  # one CuPy cannot hold (strings, records) raises, saying so
        native = host.astype(host.dtype.newbyteorder("="), copy=False)  # CuPy has native dtypes only
        if out is None:
            return self.xp.asarray(native)
        self.check_output(out, native.shape, native.dtype)  # as a GPU read checks it (then left untouched)
        out.set(native)
        return out

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.gpu.empty(shape, dtype)

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        self.gpu.check_output(out, shape, dtype)
