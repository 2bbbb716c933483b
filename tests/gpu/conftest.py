"""Shared by the GPU tests (marker ``gpu``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ort_cuda() -> None:
    """Skip, saying why, where there is no usable NVIDIA GPU or the installed onnxruntime has no CUDA
    provider (the CPU wheel; CI)."""
    from embedrt.backends import cuda
    from embedrt.backends.onnxruntime import cuda_available
    from embedrt.errors import BackendError

    try:
        cuda.gpu_info(0)
    except BackendError as exc:
        pytest.skip(f"no usable NVIDIA GPU here: {exc}")
    if not cuda_available():
        pytest.skip("this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)")
