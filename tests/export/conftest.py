"""Export-test fixtures: the quantized tiny Qwen3 and MiniLM, built once per session and shared by
test_quantize.py and test_quantize_cpu.py (tests that change an artefact copy it first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from quantize_helpers import QUICK, _copy


def _quantized(src: Path, dst: Path) -> Path:
    from embedrt_export import QuantizeOptions, quantize_artefact

    _copy(src, dst)  # the exported artefacts are shared too: quantize a copy
    quantize_artefact(dst, QuantizeOptions(**QUICK), log=lambda _: None)  # defaults: both graphs, auto-exclusion on
    return dst


@pytest.fixture(scope="session")
def qwen3_int8(qwen3_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(qwen3_artefact, tmp_path_factory.mktemp("q8") / "qwen3")


@pytest.fixture(scope="session")
def minilm_int8(minilm_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized(minilm_artefact, tmp_path_factory.mktemp("q8") / "minilm")
