"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python's ``cuda.bindings``.

cuda-python returns ``(error, value...)`` tuples instead of raising; ``_check`` turns a failure into
``BackendError`` naming the call, so a missing driver or an out-of-memory reads as such. No torch,
no CuPy: device memory is plain ``cudaMalloc`` and host staging is pinned ``cudaMallocHost`` memory
viewed as NumPy arrays, so copies are truly asynchronous.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendError

INSTALL_HINT = "`pip install 'embedrt[gpu]'` (cuda-python; needs an NVIDIA driver)"


def runtime_api() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), or the older ``cuda.cudart`` location."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise BackendError(f"the TensorRT backend needs cuda-python: {INSTALL_HINT}") from exc
    return runtime


def _check(result: Any, call: str) -> Any:
    """Unwrap ``(err, *values)``; raise BackendError with CUDA's own message on failure."""
    cudart = runtime_api()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise BackendError(f"CUDA {call} failed: {getattr(err, 'name', err)} "
                           f"({text.decode() if isinstance(text, bytes) else text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    sm: str  # "89" for compute capability 8.9
    total_bytes: int


def gpu_count() -> int:
    """GPUs visible to this process (after ``CUDA_VISIBLE_DEVICES``), at least 1, or BackendError saying why none."""
    cudart = runtime_api()
    try:
        count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except BackendError:
        raise
    except Exception as exc:  # e.g. a cuda-python built for a newer CUDA than the driver loads
        raise BackendError(f"CUDA could not start: {exc}") from exc
    if not count:
        raise BackendError("no CUDA GPU is visible (cudaGetDeviceCount returned 0)")
    return int(count)


def gpu_info(index: int = 0) -> GpuInfo:
    """The GPU the runtime will use, or BackendError (no driver, no GPU, bad index)."""
    cudart = runtime_api()
    count = gpu_count()
    if not 0 <= index < count:
        raise BackendError(f"GPU {index} asked for, but only {count} visible")
    prop = _check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(index, name.strip("\x00 "), f"{prop.major}{prop.minor}", int(prop.totalGlobalMem))


def set_device(index: int) -> None:
    _check(runtime_api().cudaSetDevice(index), "cudaSetDevice")


def memory_in_use() -> int:
    """Bytes of device memory in use on the current GPU (by every process): for leak checks."""
    free, total = _check(runtime_api().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(total) - int(free)


class Stream:
    """A non-blocking stream: TensorRT warns that the legacy default stream adds device syncs."""

    def __init__(self) -> None:
        cudart = runtime_api()
        self._stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                              "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        return int(self._stream)

    @property
    def raw(self) -> Any:
        return self._stream

    def synchronize(self) -> None:
        _check(runtime_api().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            runtime_api().cudaStreamDestroy(self._stream)
            self._stream = None


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(1, int(nbytes))
        self.ptr: int = int(_check(runtime_api().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def close(self) -> None:
        if self.ptr:
            runtime_api().cudaFree(self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory with a NumPy view of ``dtype``; async copies need pinned memory."""

    def __init__(self, nbytes: int, dtype: np.dtype[Any]) -> None:
        self.nbytes = max(1, int(nbytes))
        self.ptr: int = int(_check(runtime_api().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes} bytes)"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8).view(dtype)

    def close(self) -> None:
        if self.ptr:
            self.array = np.empty(0, dtype=self.array.dtype)  # drop the view before the memory goes
            runtime_api().cudaFreeHost(self.ptr)
            self.ptr = 0


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    cudart = runtime_api()
    _check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                  stream.raw), "cudaMemcpyAsync(host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    cudart = runtime_api()
    _check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                  stream.raw), "cudaMemcpyAsync(device to host)")


__all__ = ["DeviceBuffer", "GpuInfo", "PinnedBuffer", "Stream", "copy_to_device", "copy_to_host", "gpu_info",
           "memory_in_use", "runtime_api", "set_device"]
