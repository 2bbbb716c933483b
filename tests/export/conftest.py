"""Export-test fixtures: the quantized tiny Qwen3 and MiniLM, built once per session and shared by
test_quantize.py and test_quantize_cpu.py, and the quantized tiny rerankers of test_quantize_rerank.py
(tests that change an artefact copy it first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from quantize_helpers import QUICK, RERANK_QUICK, _copy


def _quantized(src: Path, dst: Path, limits: dict[str, object] = QUICK) -> Path:
    from embedrt_export import QuantizeOptions, quantize_artefact

    _copy(src, dst)  # the exported artefacts are shared too: quantize a copy
    # defaults: both graphs, the task's gate, auto-exclusion on
    quantize_artefact(dst, QuantizeOptions(**limits), log=lambda _: None)  # type: ignore[arg-type]
    return dst


@pytest.fixture(scope="session")
def qwen3_int8(qwen3_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(qwen3_artefact, tmp_path_factory.mktemp("q8") / "qwen3")


@pytest.fixture(scope="session")
def minilm_int8(minilm_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(minilm_artefact, tmp_path_factory.mktemp("q8") / "minilm")


# -- rerankers (issue #15): the tiny checkpoints of tests/conftest.py, exported here with FP16 too and max length
# 128 (these fixtures override the root's FP32-only exports inside tests/export) -----------------------------

RERANK_MAX_LENGTH = 128


def _export(src: Path, dst: Path, **options: object) -> Path:
    from embedrt_export import ExportOptions, export_model

    export_model(str(src), dst, ExportOptions(max_length=RERANK_MAX_LENGTH, **options), log=lambda _: None)  # type: ignore[arg-type]
    return dst


@pytest.fixture(scope="session")
def qwen3_reranker_artefact(qwen3_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(qwen3_reranker_dir, tmp_path_factory.mktemp("artefacts") / "tiny-qwen3-reranker")


@pytest.fixture(scope="session")
def cross_encoder_artefact(cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(cross_encoder_dir, tmp_path_factory.mktemp("artefacts") / "tiny-cross-encoder")


@pytest.fixture(scope="session")
def qwen3_reranker_int8(qwen3_reranker_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(qwen3_reranker_artefact, tmp_path_factory.mktemp("q8") / "qwen3-reranker", RERANK_QUICK)


@pytest.fixture(scope="session")
def cross_encoder_int8(cross_encoder_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(cross_encoder_artefact, tmp_path_factory.mktemp("q8") / "cross-encoder", RERANK_QUICK)
