"""The TensorRT backend on a real GPU: build for it, parity with ONNX Runtime, buffers, memory.

Marker ``gpu``: every test here is skipped, with the reason printed (``-ra``), where there is no
NVIDIA GPU, no cuda-python, or no TensorRT flavour that can build for this GPU.
"""

from __future__ import annotations

import shutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedrt import Embedder
from embedrt.backends import cuda
from embedrt.backends.base import Batch
from embedrt.backends.trt_loader import installed_flavours
from embedrt.engines import RTX_TARGETS
from embedrt.errors import BackendError

pytestmark = pytest.mark.gpu

TEXTS = ["The cat sat on the mat.", "a", "", "def f(x):\n    return x * 2",
         "Der schnelle braune Fuchs springt über den faulen Hund. " * 6, "emoji 🚀 and CJK 日本語"]


def _gpu_or_skip() -> tuple[cuda.GpuInfo, str]:
    try:
        gpu = cuda.gpu_info(0)
    except BackendError as exc:
        pytest.skip(f"no usable NVIDIA GPU here: {exc}")
    flavours = installed_flavours()
    if "tensorrt" in flavours:
        return gpu, "tensorrt"
    if "tensorrt-rtx" in flavours:
        return gpu, "tensorrt-rtx"  # an unlisted GPU (SM90) is refused by the build; `built` skips
    pytest.skip("no TensorRT flavour installed (pip install 'embedrt[tensorrt-rtx]' or datacenter tensorrt)")


@pytest.fixture(scope="module")
def built(qwen3_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    gpu, flavour = _gpu_or_skip()
    from embedrt_export.errors import ExportError
    from embedrt_export.trt import BuildOptions, build_engines

    artefact = tmp_path_factory.mktemp("gpu") / "tiny-qwen3"
    shutil.copytree(qwen3_artefact, artefact)
    try:
        records = build_engines(artefact, BuildOptions(("fp32", "fp16"), None, flavour, contexts=2), log=print)
    except (ExportError, BackendError) as exc:
        if flavour == "tensorrt-rtx" and gpu.sm not in RTX_TARGETS:
            pytest.skip(f"{gpu.name} is sm{gpu.sm}, not a TensorRT-RTX target, and datacenter TensorRT is "
                        f"not installed; TensorRT-RTX refused: {exc}")
        raise
    yield artefact, records


def test_build_for_this_gpu_records_passing_parity(built: tuple[Path, Any]) -> None:
    _, records = built
    gpu = cuda.gpu_info(0)
    assert {r.key.precision for r in records} == {"fp32", "fp16"}
    for record in records:
        assert record.key.sm == gpu.sm
        assert record.parity is not None and record.parity["passed"], record.parity
        print(f"{record.key}: {gpu.name} min cosine {record.parity['min_cosine']:.6f} "
              f"mean {record.parity['mean_cosine']:.6f}, build {record.build['seconds']} s, "
              f"plan {record.plan_bytes / 2**20:.1f} MiB")


@pytest.mark.parametrize("precision, threshold", [("fp32", 0.9999), ("fp16", 0.999)])
def test_parity_with_onnxruntime(built: tuple[Path, Any], precision: str, threshold: float) -> None:
    artefact, _ = built
    with Embedder.load(artefact, "onnxruntime", precision="fp32") as ort, \
            Embedder.load(artefact, "tensorrt", precision=precision) as engine:
        assert engine.backend_name == "tensorrt"
        cos = np.einsum("ij,ij->i", engine.embed(TEXTS), ort.embed(TEXTS))
        assert cos.min() >= threshold, cos


def cuda_graphs_missing(trt: Any) -> str | None:
    """Why this TensorRT cannot capture CUDA graphs, or None. Only TensorRT-RTX has the switch
    (``CudaGraphStrategy``, ``IRuntimeConfig.cuda_graph_strategy``); datacenter TensorRT 10 / 11 have neither."""
    if hasattr(trt, "CudaGraphStrategy") and hasattr(getattr(trt, "IRuntimeConfig", None), "cuda_graph_strategy"):
        return None
    return (f"TensorRT {trt.__version__} has no CUDA-graph capture (CudaGraphStrategy and "
            "IRuntimeConfig.cuda_graph_strategy exist only in TensorRT-RTX); the backend refuses cuda_graphs there")


def test_only_tensorrt_rtx_offers_cuda_graphs() -> None:  # no GPU needed: decides the skip below
    datacenter = types.ModuleType("tensorrt")  # datacenter TensorRT 10.0-11.4 (tests/export/test_trt_contract.py)
    datacenter.__version__ = "11.4.0.106"  # type: ignore[attr-defined]
    assert "has no CUDA-graph capture" in str(cuda_graphs_missing(datacenter))
    rtx = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    assert cuda_graphs_missing(rtx) is None


def _flavour_module(records: Any) -> Any:
    return installed_flavours()[records[0].key.flavour]


def test_cuda_graphs_are_refused_where_tensorrt_has_none(built: tuple[Path, Any]) -> None:
    artefact, records = built
    if cuda_graphs_missing(_flavour_module(records)) is None:
        pytest.skip(f"{records[0].key.flavour} captures CUDA graphs: test_cuda_graphs_give_the_same_embeddings runs")
    from embedrt.config import BackendConfig

    with pytest.raises(BackendError, match="turn cuda_graphs off"):
        Embedder.load(artefact, "tensorrt", precision="fp16", backend_config=BackendConfig(cuda_graphs=True))


def test_cuda_graphs_give_the_same_embeddings(built: tuple[Path, Any]) -> None:
    artefact, records = built
    missing = cuda_graphs_missing(_flavour_module(records))
    if missing is not None:
        pytest.skip(missing)
    from embedrt.config import BackendConfig

    with Embedder.load(artefact, "tensorrt", precision="fp16") as plain, \
            Embedder.load(artefact, "tensorrt", precision="fp16", backend_config=BackendConfig(cuda_graphs=True)) as g:
        expected = plain.embed(TEXTS)
        for _ in range(3):  # first call captures, later ones replay
            got = g.embed(TEXTS)
            assert np.einsum("ij,ij->i", got, expected).min() >= 0.99999
        assert g.embed(TEXTS[:2]).shape == (2, g.manifest.hidden_size)  # a new shape: captured anew


def test_auto_backend_picks_the_engine(built: tuple[Path, Any]) -> None:
    artefact, _ = built
    with Embedder.load(artefact) as embedder:
        assert embedder.backend_name == "tensorrt" and embedder.precision == "fp16"


def test_batched_equals_single(built: tuple[Path, Any]) -> None:
    artefact, _ = built
    with Embedder.load(artefact, "tensorrt", precision="fp32") as engine:
        together = engine.embed(TEXTS)
        alone = np.concatenate([engine.embed([t]) for t in TEXTS])
        assert np.einsum("ij,ij->i", together, alone).min() >= 0.99999


def test_pipelined_micro_batches_equal_one_at_a_time(built: tuple[Path, Any]) -> None:
    # A small token budget makes many micro-batches; run_many keeps two in flight on two contexts.
    artefact, _ = built
    from embedrt.config import BatchingConfig

    texts = [" ".join(["token"] * (1 + (i * 7) % 60)) + f" {i}" for i in range(120)]
    small = BatchingConfig(max_batch_tokens=256, max_batch_size=8)
    with Embedder.load(artefact, "tensorrt", precision="fp32", batching=small) as engine:
        assert len(_backend(engine)._slots) == 2
        together = engine.embed(texts)
        alone = np.concatenate([engine.embed([t]) for t in texts[::10]])
        assert np.einsum("ij,ij->i", together[::10], alone).min() >= 0.99999
        again = engine.embed(texts)
        np.testing.assert_allclose(again, together, atol=1e-5)


def _backend(embedder: Embedder) -> Any:
    return embedder._backend


def test_buffers_are_reused_across_shape_changes(built: tuple[Path, Any]) -> None:
    artefact, _ = built
    with Embedder.load(artefact, "tensorrt", precision="fp16") as embedder:
        backend = _backend(embedder)
        pointers = [{n: b.ptr for n, b in slot.device.items()} for slot in backend._slots]
        rng = np.random.default_rng(0)
        results = {}
        for rows, seq in [(1, 16), (8, 128), (3, 64), (64, 32), (1, 16), (8, 128)]:
            ids = rng.integers(1, 500, (rows, seq)).astype(np.int64)
            batch = Batch(ids, np.ones_like(ids), np.full(rows, seq))
            out = backend.run(batch)["sentence_embedding"]
            assert out.shape == (rows, embedder.manifest.hidden_size) and np.isfinite(out).all()
            key = (rows, seq)
            if key in results:  # the same shape again, after others: same answer
                np.testing.assert_allclose(out, results[key], atol=1e-3)
            results[key] = out
        assert [{n: b.ptr for n, b in slot.device.items()} for slot in backend._slots] == pointers


def test_many_calls_do_not_grow_gpu_memory(built: tuple[Path, Any]) -> None:
    artefact, _ = built
    with Embedder.load(artefact, "tensorrt", precision="fp16") as embedder:
        for _ in range(20):  # warm up: lazy allocations, kernel JIT (TensorRT-RTX)
            embedder.embed(TEXTS)
        before = cuda.memory_in_use()
        for i in range(300):
            embedder.embed(TEXTS[: 1 + i % len(TEXTS)])
        grown = cuda.memory_in_use() - before
        print(f"GPU memory in use after load: {before / 2**20:.0f} MiB; growth over 300 calls: {grown / 2**20:.1f} MiB")
        assert grown < 8 * 2**20
