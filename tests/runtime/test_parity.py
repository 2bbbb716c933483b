"""The runtime's vectors equal the PyTorch reference with the official pooling (FP32: min cosine 0.99999)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import TEXTS, min_cosine, torch_reference

from embedrt import Embedder

FP32_MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def qwen3_texts(qwen3: Embedder) -> list[str]:
    # Documents plus instruction-formatted queries, as users send them.
    return TEXTS + [qwen3.manifest.prompts.format_query(t) for t in ("what is a vector database?", "")]


def test_qwen3_matches_pytorch(qwen3: Embedder, qwen3_dir: Path, qwen3_artefact: Path,
                               qwen3_texts: list[str]) -> None:
    reference = torch_reference(qwen3_dir, qwen3_texts, qwen3.manifest.max_length, "last_token",
                                tokenizer_file=qwen3_artefact / "tokenizer.json")
    got = qwen3.embed(qwen3_texts)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert min_cosine(got, reference) >= FP32_MIN_COSINE


def test_qwen3_unnormalised_matches_raw_pooled_state(qwen3: Embedder, qwen3_dir: Path, qwen3_artefact: Path,
                                                      qwen3_texts: list[str]) -> None:
    reference = torch_reference(qwen3_dir, qwen3_texts, qwen3.manifest.max_length, "last_token",
                                normalize=False, tokenizer_file=qwen3_artefact / "tokenizer.json")
    raw = qwen3.embed(qwen3_texts, normalize=False)
    np.testing.assert_allclose(raw, reference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # really raw, not unit


def test_minilm_matches_pytorch_and_sentence_transformers(minilm: Embedder, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    got = minilm.embed(TEXTS)
    reference = torch_reference(minilm_dir, TEXTS, minilm.manifest.max_length, "mean")
    assert min_cosine(got, reference) >= FP32_MIN_COSINE
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    assert st.max_seq_length == minilm.manifest.max_length
    expected = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert min_cosine(got, expected) >= FP32_MIN_COSINE


def _ids_agree(model_dir: Path, embedder: Embedder) -> bool:
    """transformers' AutoTokenizer (truncation included) gives the ids the runtime gives."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    expected = [hf(t, truncation=True, max_length=embedder.manifest.max_length)["input_ids"] for t in TEXTS]
    return expected == [e.ids.tolist() for e in embedder.prepare(TEXTS)]


def test_transformers_tokenizes_minilm_like_the_runtime(minilm_dir: Path, minilm: Embedder) -> None:
    assert _ids_agree(minilm_dir, minilm)


def test_transformers_tokenizes_synthetic_qwen3_like_the_runtime(qwen3_dir: Path, qwen3: Embedder) -> None:
    assert _ids_agree(qwen3_dir, qwen3)
