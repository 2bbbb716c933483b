"""The ONNX Runtime backend on the CUDA execution provider: parity with CPU, batching, auto choice.

Marker ``gpu``: skipped, with the reason printed, where there is no NVIDIA GPU or the installed
onnxruntime has no CUDA provider (the CPU wheel; CI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrt import Embedder
from embedrt.config import BackendConfig

pytestmark = pytest.mark.gpu

TEXTS = ["The cat sat on the mat.", "a", "", "def f(x):\n    return x * 2",
         "Der schnelle braune Fuchs springt über den faulen Hund. " * 6, "emoji 🚀 and CJK 日本語"]
CUDA = BackendConfig(device="cuda")


@pytest.fixture(scope="module", autouse=True)
def _cuda_provider() -> None:
    from embedrt.backends import _cuda
    from embedrt.backends.onnxruntime import cuda_available
    from embedrt.errors import BackendError

    try:
        _cuda.gpu_info(0)
    except BackendError as exc:
        pytest.skip(f"no usable NVIDIA GPU here: {exc}")
    if not cuda_available():
        pytest.skip("this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)")


@pytest.mark.parametrize("precision, threshold", [("fp32", 0.99999), ("fp16", 0.999)])
def test_cuda_matches_cpu(qwen3_artefact: Path, precision: str, threshold: float) -> None:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32", backend_config=BackendConfig(device="cpu")) \
            as cpu, Embedder.load(qwen3_artefact, "onnxruntime", precision=precision, backend_config=CUDA) as gpu:
        facts = gpu.info()["backend_details"]
        assert facts["device"] == "cuda" and facts["providers"].startswith("CUDAExecutionProvider"), facts
        cos = np.einsum("ij,ij->i", gpu.embed(TEXTS), cpu.embed(TEXTS))
        print(f"ORT CUDA {precision} vs CPU FP32: min cosine {cos.min():.7f}")
        assert cos.min() >= threshold, cos


def test_cuda_batched_equals_single(qwen3_artefact: Path) -> None:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32", backend_config=CUDA) as gpu:
        together = gpu.embed(TEXTS)
        alone = np.concatenate([gpu.embed([t]) for t in TEXTS])
        assert np.einsum("ij,ij->i", together, alone).min() >= 0.99999


def test_auto_uses_cuda_when_no_engine_fits(qwen3_artefact: Path) -> None:
    with Embedder.load(qwen3_artefact) as embedder:  # the test artefact has no engines
        assert embedder.backend_name == "onnxruntime"
        assert embedder.info()["backend_details"]["device"] == "cuda" and embedder.precision == "fp16"
