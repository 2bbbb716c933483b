"""The TensorRT backend's CUDA plumbing on a real GPU, without TensorRT: pinned and device buffers,
asynchronous copies on a non-blocking stream, and memory given back on close.

Marker ``gpu``: skipped, with the reason printed, where there is no NVIDIA GPU or no cuda-python.
These run on any NVIDIA GPU, including those no installed TensorRT flavour supports (SM90 with only
TensorRT-RTX), so the buffer code is proven wherever a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedrt.backends import cuda
from embedrt.errors import BackendError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> cuda.GpuInfo:
    try:
        info = cuda.gpu_info(0)
    except BackendError as exc:
        pytest.skip(f"no usable NVIDIA GPU here: {exc}")
    cuda.set_device(0)
    return info


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.float32])
def test_round_trip_through_pinned_and_device_buffers(gpu: cuda.GpuInfo, dtype: type) -> None:
    count = 1 << 18
    data = (np.random.default_rng(0).integers(0, 30000, count)).astype(dtype)
    stream = cuda.Stream()
    staged = cuda.PinnedBuffer(data.nbytes, np.dtype(dtype))
    device = cuda.DeviceBuffer(data.nbytes)
    back = cuda.PinnedBuffer(data.nbytes, np.dtype(dtype))
    try:
        np.copyto(staged.array, data)
        cuda.copy_to_device(device, staged, data.nbytes, stream)
        cuda.copy_to_host(back, device, data.nbytes, stream)
        stream.synchronize()
        np.testing.assert_array_equal(back.array, data)
        # A partial copy leaves the rest of the destination as it was.
        back.array[:] = 0
        cuda.copy_to_host(back, device, data.nbytes // 2, stream)
        stream.synchronize()
        np.testing.assert_array_equal(back.array[: count // 2], data[: count // 2])
        assert not back.array[count // 2:].any()
    finally:
        for buffer in (staged, device, back):
            buffer.close()
        stream.close()


def test_buffers_give_their_memory_back(gpu: cuda.GpuInfo) -> None:
    size = 256 * 2**20
    before = cuda.memory_in_use()
    buffers = [cuda.DeviceBuffer(size) for _ in range(4)]
    held = cuda.memory_in_use() - before
    for buffer in buffers:
        buffer.close()
        buffer.close()  # twice is harmless
    after = cuda.memory_in_use() - before
    print(f"{gpu.name} (sm{gpu.sm}): 4 x 256 MiB held {held / 2**20:.0f} MiB, after close {after / 2**20:.0f} MiB")
    assert held >= 4 * size
    assert after < 16 * 2**20


def test_out_of_memory_is_a_backend_error(gpu: cuda.GpuInfo) -> None:
    with pytest.raises(BackendError, match=r"cudaMalloc\(.*bytes\) failed"):
        cuda.DeviceBuffer(gpu.total_bytes * 4)
