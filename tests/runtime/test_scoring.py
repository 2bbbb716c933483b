"""The score head (``embedrt.scoring``): a document's best window, ranking, top_n."""

from __future__ import annotations

import numpy as np
import pytest

from embedrt.errors import InvalidFieldError
from embedrt.scoring import RerankResult, best_windows, check_top_n, rank


def test_best_window_per_document_first_on_ties() -> None:
    logits = np.array([0.1, 0.9, 0.3, 0.9, 0.5, 0.2], dtype=np.float32)
    owners = np.array([0, 1, 2, 1, 0, 2])  # windows come after every document's first
    assert best_windows(logits, owners, 3).tolist() == [4, 1, 2]  # doc 1: rows 1 and 3 tie, the first wins


def test_rank_is_best_first_stable_and_cut_to_top_n() -> None:
    logits = np.array([0.5, 2.0, 0.5, -1.0, 2.0], dtype=np.float32)
    scores = 1 / (1 + np.exp(-logits))
    results = rank(scores, logits, 5)
    assert [r.index for r in results] == [1, 4, 0, 2, 3]
    assert results[0] == RerankResult(1, float(scores[1]), 2.0)
    assert [r.index for r in rank(scores, logits, 2)] == [1, 4]


def test_rank_orders_by_logit_where_scores_saturate() -> None:
    logits = np.array([20.0, 30.0], dtype=np.float32)
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    assert scores[0] == scores[1] == 1.0
    assert [r.index for r in rank(scores, logits, 2)] == [1, 0]


@pytest.mark.parametrize(("top_n", "count", "want"), [(None, 4, 4), (2, 4, 2), (9, 4, 4), (np.int64(3), 4, 3)])
def test_top_n_clamps(top_n: int | None, count: int, want: int) -> None:
    assert check_top_n(top_n, count) == want


@pytest.mark.parametrize("top_n", [0, -1, True, 2.0, "2"])
def test_top_n_below_one_or_not_a_number_is_refused(top_n: object) -> None:
    with pytest.raises(InvalidFieldError) as info:
        check_top_n(top_n, 4)  # type: ignore[arg-type]
    assert info.value.field == "top_n"
