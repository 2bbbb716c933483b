"""After the backend, for rerankers: a document's best window, and the ranking.

The graph already applies the score activation (``score`` = sigmoid(``logit``), or the logit itself),
so the head here only chooses and orders. It orders by logit: the activation is monotonic, so the
order is the scores' order, and logits still differ where float32 sigmoids saturate at 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidFieldError


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a ranking: its ``index`` in the list given, its ``score`` (the model's
    relevance: a probability for sigmoid rerankers) and its ``logit`` (before the activation)."""

    index: int
    score: float
    logit: float


def check_top_n(top_n: int | None, count: int) -> int:
    """How many results to return: all for None, at most ``count``; InvalidFieldError below 1."""
    if top_n is None:
        return count
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)):
        raise InvalidFieldError("top_n", f"must be a whole number, got {type(top_n).__name__}")
    if top_n < 1:
        raise InvalidFieldError("top_n", f"must be at least 1 (or left out for every document), got {top_n}")
    return min(int(top_n), count)


def best_windows(logits: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray:
    """For each of ``count`` documents, the row of its highest-logit window (``owners[row]`` is the
    row's document; the first such row on a tie). Every document owns at least one row."""
    order = np.lexsort((np.arange(len(owners)), -logits, owners))  # by document, best first, then row
    first = np.ones(len(order), dtype=bool)
    first[1:] = owners[order][1:] != owners[order][:-1]
    best = order[first]
    assert len(best) == count, "every document has a window"
    return best


def rank(scores: np.ndarray, logits: np.ndarray, top_n: int) -> list[RerankResult]:
    """The ``top_n`` best documents, best first; equal logits keep the documents' order."""
    order = np.argsort(-logits, kind="stable")[:top_n]
    return [RerankResult(int(i), float(scores[i]), float(logits[i])) for i in order]


__all__ = ["RerankResult", "best_windows", "check_top_n", "rank"]
