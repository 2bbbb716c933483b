"""Runtime fixtures: one opened Embedder per artefact, shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedrt import Embedder


@pytest.fixture(scope="module")
def qwen3(qwen3_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def minilm(minilm_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(minilm_artefact, "onnxruntime", precision="fp32") as embedder:
        yield embedder
