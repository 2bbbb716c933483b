"""Runtime fixtures: one opened Embedder or Reranker per artefact, shared by a module's tests (the
artefacts are built in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedrt import Embedder, Reranker


@pytest.fixture(scope="module")
def qwen3(qwen3_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def minilm(minilm_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(minilm_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def qwen3_reranker(qwen3_reranker_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(qwen3_reranker_artefact, "onnxruntime", precision="fp32") as reranker:
        yield reranker


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(cross_encoder_artefact, "onnxruntime", precision="fp32") as reranker:
        yield reranker
