"""Parity at export time: the exported graph against the PyTorch model with its official pooling.

Every text runs alone, and inside batches padded on the left and on the right; each result is
compared with the PyTorch reference of that text alone. Below tolerance the export fails, naming
the worst text and its cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParityError

# Minimum cosine against the PyTorch FP32 reference, per graph precision.
TOLERANCE = {"fp32": 0.99999, "fp16": 0.999}

BASE_TEXTS = (
    "The cat sat on the mat.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Быстрая лиса. 敏捷的棕色狐狸跳过了懒狗。",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Launch day 🚀🔥 — emoji, accents (café, naïve) and CJK: 日本語のテキスト",
    "a",
    "",
)


def parity_texts(query_formatter: Callable[[str], str]) -> list[str]:
    """The fixed parity set: multilingual, code, emoji, a query, one character, empty, over-long."""
    texts = list(BASE_TEXTS)
    texts.insert(4, query_formatter("how do vector databases index embeddings?"))
    return texts


def long_text(count_tokens: Callable[[str], int], max_length: int) -> str:
    """A text longer than ``max_length`` tokens: exercises truncation that must keep the end token."""
    sentence = "Retrieval systems embed passages once and compare them with every incoming query. "
    text = sentence
    while count_tokens(text) <= max_length + 8:
        text += sentence * max(1, (max_length - count_tokens(text)) // 16 + 1)
    return text


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray
    attention_mask: np.ndarray


Tokenize = Callable[[Sequence[str], str], Encoded]  # (texts, padding side) -> padded batch
Run = Callable[[Encoded], np.ndarray]  # -> [batch, hidden] float32, L2-normalised


def _batches(texts: Sequence[str], long_index: int) -> list[list[int]]:
    """All short texts together; the over-long one with one short text so it is padded too."""
    short = [i for i in range(len(texts)) if i != long_index]
    return [short, [long_index, short[0]]]


def measure(
    texts: Sequence[str],
    reference: np.ndarray,
    tokenize: Tokenize,
    run: Run,
    precision: str,
    long_index: int,
    padding_sides: Sequence[str] = ("left", "right"),
) -> dict[str, Any]:
    """Compare ``run`` with ``reference`` (one row per text) alone and in padded batches."""
    threshold = TOLERANCE[precision]
    modes: dict[str, np.ndarray] = {"single": np.empty(len(texts))}
    for i, text in enumerate(texts):
        row = run(tokenize([text], "right"))[0]
        modes["single"][i] = float(row @ reference[i])
    for side in padding_sides:
        cosines = np.empty(len(texts))
        for batch in _batches(texts, long_index):
            out = run(tokenize([texts[i] for i in batch], side))
            for row, i in zip(out, batch, strict=True):
                cosines[i] = float(row @ reference[i])
        modes[f"batch_{side}"] = cosines
    all_cos = np.stack(list(modes.values()))
    mode_idx, text_idx = (int(i) for i in np.unravel_index(np.argmin(all_cos), all_cos.shape))
    worst = float(all_cos[mode_idx, text_idx])
    return {
        "precision": precision,
        "reference": "pytorch-fp32",
        "threshold_min_cosine": threshold,
        "min_cosine": worst,
        "mean_cosine": float(all_cos.mean()),
        "per_mode_min_cosine": {m: float(c.min()) for m, c in modes.items()},
        "worst_text_index": text_idx,
        "worst_text": texts[text_idx][:80],
        "worst_mode": list(modes)[mode_idx],
        "texts": len(texts),
        "passed": bool(worst >= threshold),
    }


def check(report: dict[str, Any]) -> None:
    if not report["passed"]:
        raise ParityError(
            f"{report['precision']} graph fails parity: min cosine {report['min_cosine']:.6f} < "
            f"{report['threshold_min_cosine']} on text {report['worst_text_index']} "
            f"({report['worst_text']!r}, {report['worst_mode']})",
            report,
        )
