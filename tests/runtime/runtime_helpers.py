"""Shared test data and the PyTorch reference (imported by the runtime tests; torch only inside)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from embedrt_export.export.parity import BASE_TEXTS as PARITY_TEXTS

# The export's parity set (multilingual, code, emoji, one character, empty) plus an over-long text.
TEXTS = [*PARITY_TEXTS, "Retrieval systems embed passages once and compare them with every incoming query. " * 30]


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of 0 to 150 words drawn from TEXTS, seeded: many lengths, so many micro-batch shapes."""
    rng = random.Random(seed)
    words = " ".join(TEXTS[:4]).split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 8, 20, 60, 150])))
            for _ in range(count)]


def torch_reference(model_dir: Path, texts: list[str], max_length: int, pooling: str,
                    normalize: bool = True, tokenizer_file: Path | None = None) -> np.ndarray:
    """transformers FP32 and the official pooling (export's ``reference_pool``), one text at a time.

    ``tokenizer_file``: tokenize with that tokenizer.json as it is (transformers' fast tokenizer
    over it, truncation included) instead of the class ``AutoTokenizer`` rebuilds; see
    test_parity.test_transformers_tokenizes_like_the_artefact.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

    from embedrt_export.export.wrapper import reference_pool

    if tokenizer_file is not None:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            pooled = reference_pool(hidden, enc["attention_mask"], pooling)
            rows.append((torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled)[0].numpy())
    return np.stack(rows).astype(np.float32)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())
