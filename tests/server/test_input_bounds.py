"""Bounded tokenizer work per input (issue 13, item 2) and text validation in the library (item 15)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _serving import Served
from tokenizers import Tokenizer

from embedrt import Embedder
from embedrt.errors import InputTooLongError, InvalidInputError
from embedrt.tokenizer import CHARS_PER_TOKEN

WORDS = "the quick brown fox jumps over the lazy dog while naïve cafés serve 東京 tea; "


def _reference_ids(artefact: Path, text: str, max_length: int) -> list[int]:
    """What the whole text tokenizes to, with no cut: the result the bound must not change."""
    tok = Tokenizer.from_file(str(artefact / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok.encode(text).ids


@pytest.mark.parametrize("text", [
    "short",
    WORDS * 40,  # well past max_length tokens
    " " * 3000 + "words after a long run of spaces",  # few tokens in many characters
    "x" * 5000,  # one long word
    "a b " * 600 + "zzz",
], ids=["short", "long", "spaces", "long-word", "many-short"])
def test_bounded_tokenizing_gives_the_same_ids_as_the_whole_text(library: Embedder, artefact: Path,
                                                                 text: str) -> None:
    (got,) = library.prepare([text])
    assert got.ids.tolist() == _reference_ids(artefact, text, library.manifest.max_length)


def test_a_huge_text_is_cut_before_tokenizing(library: Embedder) -> None:
    huge = WORDS * (10_000_000 // len(WORDS))  # ~10 MB
    bound = library.manifest.max_length * CHARS_PER_TOKEN
    library.embed(["warm"])
    started = time.perf_counter()
    vector = library.embed([huge])
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"a 10 MB text took {elapsed:.2f}s"
    np.testing.assert_array_equal(vector, library.embed([huge[:bound]]))


def test_over_length_is_detected_from_a_prefix(library: Embedder) -> None:
    huge = WORDS * (10_000_000 // len(WORDS))
    started = time.perf_counter()
    with pytest.raises(InputTooLongError, match="at least"):
        library.embed(["fine", huge], truncate=False)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(InputTooLongError) as info:
        library.embed([WORDS * 10], truncate=False)  # shorter than the cut: counted exactly
    assert "at least" not in str(info.value) and info.value.index == 0


@pytest.mark.parametrize("texts", [None, 42, ["ok", None], ["ok", "bad \ud800 surrogate"]],
                         ids=["none", "int", "none-item", "lone-surrogate"])
def test_non_text_input_is_invalid_input(library: Embedder, texts: object) -> None:
    with pytest.raises(InvalidInputError):
        library.embed(texts)  # type: ignore[arg-type]


def test_huge_texts_do_not_stall_a_small_request(served: Served) -> None:
    huge = WORDS * (10_000_000 // len(WORDS))
    results: list[int] = []
    posters = [threading.Thread(target=lambda: results.append(
        served.http.post("/v1/embeddings", json={"input": [huge]}).status_code)) for _ in range(2)]
    for poster in posters:
        poster.start()
    time.sleep(0.2)  # the huge requests are uploading / being tokenized
    started = time.perf_counter()
    small = served.http.post("/v1/embeddings", json={"input": "tiny"})
    waited = time.perf_counter() - started
    for poster in posters:
        poster.join(30)
    assert small.status_code == 200 and results == [200, 200]
    assert waited < 1.0, f"a tiny request waited {waited:.2f}s behind two 10 MB texts"
