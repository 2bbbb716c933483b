"""``Embedder.embed_iter``: lazy, in input order, bounded by its window, equal to ``embed`` on the whole."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from runtime_helpers import TEXTS, mixed_texts

from embedrt import Embedder, InputTooLongError, InvalidFieldError, InvalidInputError
from embedrt.errors import InvalidTextError
from embedrt.streaming import embed_blocks


def test_blocks_in_input_order_equal_embed(qwen3: Embedder) -> None:
    texts = mixed_texts(50, seed=3) + TEXTS
    blocks = list(qwen3.embed_iter(iter(texts), window=16))
    assert [len(b) for b in blocks] == [16, 16, 16, len(texts) - 48]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), qwen3.embed(texts), atol=2e-6)


def test_consumes_lazily_one_window_at_a_time(qwen3: Embedder) -> None:
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"text number {pulled}"

    blocks = qwen3.embed_iter(endless(), window=8)
    assert pulled == 0  # nothing read before the first block is asked for
    first = next(blocks)
    assert first.shape == (8, 64) and pulled == 8
    next(blocks)
    assert pulled == 16


@pytest.mark.parametrize("options", [dict(instruction="Find papers", dimensions=32),
                                     dict(normalize=False)])
def test_options_as_embed(qwen3: Embedder, options: dict) -> None:
    got = np.concatenate(list(qwen3.embed_iter(TEXTS, window=3, **options)))
    np.testing.assert_allclose(got, qwen3.embed(TEXTS, **options), atol=2e-6)


def test_queries_and_documents_as_their_verbs(qwen3: Embedder) -> None:
    queries = np.concatenate(list(qwen3.embed_iter(TEXTS, prompt="query", window=4)))
    np.testing.assert_allclose(queries, qwen3.embed_queries(TEXTS), atol=2e-6)
    chosen = np.concatenate(list(qwen3.embed_iter(TEXTS, prompt="query", instruction="Find code", window=4)))
    np.testing.assert_allclose(chosen, qwen3.embed_queries(TEXTS, instruction="Find code"), atol=2e-6)
    documents = np.concatenate(list(qwen3.embed_iter(TEXTS, prompt="document", window=4)))
    np.testing.assert_allclose(documents, qwen3.embed_documents(TEXTS), atol=2e-6)


def test_blocks_count_the_tokens_run(qwen3: Embedder) -> None:
    blocks = list(embed_blocks(qwen3, TEXTS, window=5))
    assert sum(b.tokens for b in blocks) == sum(e.length for e in qwen3.prepare(TEXTS))


def test_empty_iterable_yields_nothing(qwen3: Embedder) -> None:
    assert list(qwen3.embed_iter([])) == []


def test_bad_options_refused_at_the_call(qwen3: Embedder, minilm: Embedder) -> None:
    """Before anything is read: the generator is not even started."""
    never = iter(["x"])
    with pytest.raises(InvalidInputError, match="between 32 and 64"):
        qwen3.embed_iter(never, dimensions=7)
    with pytest.raises(InvalidFieldError, match="takes no instruction"):
        minilm.embed_iter(never, instruction="Find papers")
    with pytest.raises(InvalidInputError, match="documents take no instruction"):
        qwen3.embed_iter(never, prompt="document", instruction="x")
    with pytest.raises(InvalidInputError, match="window"):
        qwen3.embed_iter(never, window=0)
    with pytest.raises(InvalidInputError, match="not a single string"):
        qwen3.embed_iter("one text")
    assert next(never) == "x"


def test_bad_text_named_by_its_place_in_the_whole(qwen3: Embedder) -> None:
    blocks = qwen3.embed_iter(["a", "b", "c", "d", 5], window=2)  # type: ignore[list-item]
    next(blocks), next(blocks)
    with pytest.raises(InvalidTextError, match="input 4 is int"):
        next(blocks)
    with pytest.raises(InputTooLongError, match="input 3 has"):
        list(qwen3.embed_iter(["a", "b", "c", TEXTS[-1]], window=2, truncate=False))
