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

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("ort_cuda")]

TEXTS = ["The cat sat on the mat.", "a", "", "def f(x):\n    return x * 2",
         "Der schnelle braune Fuchs springt über den faulen Hund. " * 6, "emoji 🚀 and CJK 日本語"]
CUDA = BackendConfig(device="cuda")


@pytest.mark.parametrize("precision, threshold", [("fp32", 0.99999), ("fp16", 0.999)])
def test_cuda_matches_cpu(qwen3_artefact: Path, precision: str, threshold: float) -> None:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32", backend_config=BackendConfig(device="cpu")) \
            as cpu, Embedder.load(qwen3_artefact, "onnxruntime", precision=precision, backend_config=CUDA) as gpu:
        facts = gpu.info().backend
        assert facts.device == "cuda" and facts.providers[0] == "CUDAExecutionProvider", facts
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
        assert embedder.info().backend.device == "cuda" and embedder.precision == "fp16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_graph_has_no_memcpy_on_cuda(qwen3_artefact: Path, precision: str, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_gpu import memcpy_nodes  # one placement check for the benchmark and this test

    copies = memcpy_nodes(qwen3_artefact, f"model.{precision}.onnx", tmp_path)
    print(f"Memcpy nodes in the CUDA-partitioned fused {precision} graph: {copies}")
    assert copies == []


def test_fused_and_eager_agree_on_cuda(qwen3_artefact: Path) -> None:
    fp16 = BackendConfig(device="cuda", precision="fp16")
    with Embedder.load(qwen3_artefact, "onnxruntime", backend_config=fp16) as fused, \
            Embedder.load(qwen3_artefact, "onnxruntime", backend_config=BackendConfig(
                device="cuda", precision="fp16", attention="eager")) as eager:
        assert fused.info().backend.attention == "fused"
        cos = np.einsum("ij,ij->i", fused.embed(TEXTS), eager.embed(TEXTS))
        print(f"ORT CUDA FP16 fused vs eager: min cosine {cos.min():.7f}")
        assert cos.min() >= 0.999


def test_cuda_graphs_replay_equal_results(qwen3_artefact: Path) -> None:
    graphs = BackendConfig(device="cuda", precision="fp16", cuda_graphs=True)
    with Embedder.load(qwen3_artefact, "onnxruntime", backend_config=graphs) as captured, \
            Embedder.load(qwen3_artefact, "onnxruntime", backend_config=BackendConfig(
                device="cuda", precision="fp16")) as plain:
        facts = captured.info().backend
        assert facts.notes["cuda_graphs"].startswith("on"), facts
        for _ in range(4):  # warm-up runs, capture, then replays of the same shapes
            for texts in (TEXTS[:1], TEXTS[:3], TEXTS):
                cos = np.einsum("ij,ij->i", captured.embed(texts), plain.embed(texts))
                assert cos.min() >= 0.9999, cos
        # Replays read the buffers' new contents, not the captured ones.
        a, b = captured.embed(["first text"]), captured.embed(["a different text entirely"])
        assert float(a[0] @ b[0]) < 0.9999
        assert captured._backend.cuda.captured_shapes  # type: ignore[union-attr]
