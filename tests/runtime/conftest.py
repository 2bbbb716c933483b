"""Runtime fixtures: one opened Embedder per artefact, shared by a module's tests; tiny exported rerankers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedrt import Embedder, Reranker

# Room for the Qwen3-Reranker prompt (about 47 tokens with the fixture tokenizer) and a short pair;
# the cross-encoder's is small so that ordinary test documents overflow it.
QWEN3_RERANKER_MAX_LENGTH = 192
CROSS_ENCODER_MAX_LENGTH = 64


@pytest.fixture(scope="module")
def qwen3(qwen3_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def minilm(minilm_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(minilm_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="session")
def qwen3_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrt_export.testing.rerankers import make_qwen3_reranker

    return make_qwen3_reranker(tmp_path_factory.mktemp("rerankers") / "tiny-qwen3-reranker")


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrt_export.testing.rerankers import make_cross_encoder

    return make_cross_encoder(tmp_path_factory.mktemp("rerankers") / "tiny-cross-encoder")


def _export_reranker(source: Path, out: Path, max_length: int) -> Path:
    from embedrt_export import ExportOptions, export_model

    export_model(str(source), out, ExportOptions(dtypes=("fp32",), max_length=max_length, task="rerank"),
                 log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def qwen3_reranker_artefact(qwen3_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_reranker(qwen3_reranker_dir, tmp_path_factory.mktemp("artefacts") / "tiny-qwen3-reranker",
                            QWEN3_RERANKER_MAX_LENGTH)


@pytest.fixture(scope="session")
def cross_encoder_artefact(cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_reranker(cross_encoder_dir, tmp_path_factory.mktemp("artefacts") / "tiny-cross-encoder",
                            CROSS_ENCODER_MAX_LENGTH)


@pytest.fixture(scope="module")
def qwen3_reranker(qwen3_reranker_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(qwen3_reranker_artefact, "onnxruntime", precision="fp32") as reranker:
        yield reranker


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(cross_encoder_artefact, "onnxruntime", precision="fp32") as reranker:
        yield reranker
