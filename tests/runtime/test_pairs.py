"""Pair tokenization (``embedrt.pairs``) against the model cards' own, with tiny tokenizers built here."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from rerank_helpers import (
    QWEN3_PROMPT,
    byte_level_tokenizer,
    card_template_ids,
    card_text_pair_ids,
    rerank_manifest,
    wordpiece_tokenizer,
    write_tokenizer_artefact,
)
from tokenizers import Tokenizer

from embedrt.errors import ArtefactError, InputTooLongError, InvalidFieldError
from embedrt.pairs import WINDOW_MARGIN, PairTokenizer, validate_pairs
from embedrt.prompts import PairPrompt
from embedrt.tokenizer import CHARS_PER_TOKEN

WORDS = "the quick brown fox jumps over lazy dog paris capital france retrieval query passages".split()


def _words(count: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=count))


PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("launch 🚀", "Launch day 🚀🔥 — café, naïve and 敏捷的棕色狐狸"),
    ("a", "b"),
    ("what is the capital of France?", ""),
    ("", "A document without a query."),
    ("{document} braces stay text", "def add(a, b):\n    return a + b"),
    ("what is the capital of France?", _words(400)),  # over-long document
    (_words(300, 1), "short document"),  # over-long query
    (_words(300, 2), _words(300, 3)),  # both over-long: longest first balances them
]


def _template(tmp_path: Path, max_length: int = 200, append: bool = False) -> tuple[PairTokenizer, Tokenizer]:
    tok = byte_level_tokenizer(append_end_of_text=append)
    manifest = rerank_manifest(QWEN3_PROMPT, max_length)
    return PairTokenizer(write_tokenizer_artefact(tmp_path / "qwen", tok, manifest), manifest), tok


def _text_pair(tmp_path: Path, max_length: int = 48) -> tuple[PairTokenizer, Tokenizer]:
    tok = wordpiece_tokenizer()
    manifest = rerank_manifest(PairPrompt(encoding="text_pair"), max_length, token_types=True, padding_side="right")
    return PairTokenizer(write_tokenizer_artefact(tmp_path / "bert", tok, manifest), manifest), tok


@pytest.mark.parametrize("append", [False, True], ids=["appends-nothing", "appends-end-of-text"])
def test_template_pairs_tokenize_as_the_model_card(tmp_path: Path, append: bool) -> None:
    pairs, tok = _template(tmp_path, append=append)
    want = card_template_ids(tok, QWEN3_PROMPT, 200, PAIRS)
    got = pairs.encode(PAIRS)
    assert [e.ids.tolist() for e in got] == want
    assert all(e.type_ids is None and e.ids.dtype == np.int64 for e in got)
    assert [e.truncated for e in got] == [len(w) == 200 and i >= 6 for i, w in enumerate(want)]
    # The prompt around the pair is never cut: the over-long ones end in the whole suffix.
    for e in got:
        assert e.ids[:len(pairs.prefix)].tolist() == pairs.prefix
        assert e.ids[-len(pairs.suffix):].tolist() == pairs.suffix
    custom = card_template_ids(tok, QWEN3_PROMPT, 200, PAIRS[:2], instruction="Find code")
    assert [e.ids.tolist() for e in pairs.encode(PAIRS[:2], instruction="Find code")] == custom


def test_text_pairs_tokenize_as_the_tokenizer_does_with_type_ids(tmp_path: Path) -> None:
    pairs, tok = _text_pair(tmp_path)
    got = pairs.encode(PAIRS)
    for e, (ids, types) in zip(got, card_text_pair_ids(tok, 48, PAIRS), strict=True):
        assert e.ids.tolist() == ids and e.type_ids is not None and e.type_ids.tolist() == types
        assert e.truncated == (len(ids) == 48)
    halves = got[-1].type_ids  # longest first: the query and the document keep about half each
    assert halves is not None and abs(int((halves == 0).sum()) - int((halves == 1).sum())) <= 2


@pytest.mark.parametrize("kind", ["template", "text_pair"])
def test_huge_texts_are_cut_before_tokenizing_without_changing_a_token(tmp_path: Path, kind: str) -> None:
    pairs, tok = _template(tmp_path) if kind == "template" else _text_pair(tmp_path)
    huge = _words(6000, 4)  # far more characters than max_length * CHARS_PER_TOKEN
    assert len(huge) > 20 * pairs.max_length * CHARS_PER_TOKEN
    # Both sides huge: the reference's longest-first truncation is quadratic in their tokens (24 s for
    # these two at 6,000 words), which the runtime's cut avoids; smaller here for the reference's sake.
    both = _words(1500, 5)
    cases = [("query", huge), (huge, "document"), (both, both[::-1])]
    started = time.perf_counter()
    pairs.encode([(huge, huge[::-1])])
    assert time.perf_counter() - started < 5  # bounded: the uncut pair takes the reference 24 s
    got = [e.ids.tolist() for e in pairs.encode(cases)]
    if kind == "template":
        assert got == card_template_ids(tok, QWEN3_PROMPT, pairs.max_length, cases)
    else:
        assert got == [ids for ids, _ in card_text_pair_ids(tok, pairs.max_length, cases)]


@pytest.mark.parametrize("kind", ["template", "text_pair"])
def test_truncate_false_names_the_over_long_pair(tmp_path: Path, kind: str) -> None:
    pairs, _ = _template(tmp_path) if kind == "template" else _text_pair(tmp_path)
    fits = pairs.encode(PAIRS[:6], truncate=False)
    assert [e.ids.tolist() for e in fits] == [e.ids.tolist() for e in pairs.encode(PAIRS[:6])]
    with pytest.raises(InputTooLongError, match=rf"^pair 6 has (at least )?\d+ tokens, more than the model's limit "
                                                rf"of {pairs.max_length}") as info:
        pairs.encode(PAIRS, truncate=False)
    assert info.value.index == 6 and info.value.tokens > pairs.max_length
    with pytest.raises(InputTooLongError, match=r"^pair 0 has \d+ tokens") as info:  # counted whole: no cut
        pairs.encode([("q", _words(pairs.room))], truncate=False)
    assert not info.value.at_least
    with pytest.raises(InputTooLongError, match="pair 1 has at least"):
        pairs.encode([PAIRS[0], ("q", _words(8000))], truncate=False)


def test_instruction_rule(tmp_path: Path) -> None:
    template, _ = _template(tmp_path)
    default = template.encode([PAIRS[0]])[0].ids.tolist()
    assert template.encode([PAIRS[0]], instruction="")[0].ids.tolist() == default  # empty: the default
    assert template.encode([PAIRS[0]], instruction="Other")[0].ids.tolist() != default
    text_pair, _ = _text_pair(tmp_path)
    with pytest.raises(InvalidFieldError, match="takes no instruction") as info:
        text_pair.encode([PAIRS[0]], instruction="Find code")
    assert info.value.field == "instruction"
    with pytest.raises(InvalidFieldError, match="takes no instruction"):
        text_pair.encode([], instruction="Find code")  # refused before any work, even for nothing


@pytest.mark.parametrize(("pairs", "match"), [
    ("a string", "not str"),
    (7, "not int"),
    ([("q", "d"), ("only one",)], "pair 1 is tuple, not a"),
    ([("q", "d"), "qd"], "pair 1 is str, not a"),
    ([("q", 3)], "the document of pair 0 is int, not str"),
    ([(None, "d")], "the query of pair 0 is NoneType"),
    ([("q", "bad \ud800")], "the document of pair 0 is not valid UTF-8 text: a lone surrogate U\\+D800"),
])
def test_bad_pairs_are_refused(pairs: object, match: str) -> None:
    with pytest.raises(InvalidFieldError, match=match) as info:
        validate_pairs(pairs)  # type: ignore[arg-type]
    assert info.value.field == "pairs"


def test_pairs_may_be_lists(tmp_path: Path) -> None:
    assert validate_pairs([["q", "d"], ("a", "b")]) == [("q", "d"), ("a", "b")]  # type: ignore[list-item]


@pytest.mark.parametrize("kind", ["template", "text_pair"])
def test_windows_cover_a_long_document_and_each_fits(tmp_path: Path, kind: str) -> None:
    pairs, tok = _template(tmp_path) if kind == "template" else _text_pair(tmp_path)
    query, document = "what is the capital of France?", _words(500, 5)
    size = pairs.window_size(query)
    taken = pairs.encode([(query, "")])[0].length
    assert size == pairs.max_length - taken - WINDOW_MARGIN
    windows = pairs.windows(query, document)
    doc_tokens = len(tok.encode(document, add_special_tokens=False).ids)
    stride = size - size // 4
    assert len(windows) == 1 + -(-(doc_tokens - size) // stride)  # enough windows to reach the end
    assert all(w.length <= pairs.max_length and not w.truncated for w in windows)
    # Every window is the pair encoding of (query, a piece of the document); the pieces cover it, in order.
    plain = Tokenizer.from_str(tok.to_str())
    pieces = [plain.decode(w.ids.tolist()) for w in windows]
    assert all(pieces)
    words = document.split()
    assert words[0] in pieces[0] and words[-1] in pieces[-1]


def test_a_document_that_fits_is_one_window_equal_to_its_pair(tmp_path: Path) -> None:
    pairs, _ = _template(tmp_path)
    [window] = pairs.windows(*PAIRS[0])
    assert window.ids.tolist() == pairs.encode([PAIRS[0]])[0].ids.tolist()
    [empty] = pairs.windows("q", "")
    assert empty.ids.tolist() == pairs.encode([("q", "")])[0].ids.tolist()


def test_a_prompt_that_leaves_no_room_is_an_artefact_error(tmp_path: Path) -> None:
    tok = byte_level_tokenizer()
    manifest = rerank_manifest(QWEN3_PROMPT, 40)
    with pytest.raises(ArtefactError, match="leaving no room"):
        PairTokenizer(write_tokenizer_artefact(tmp_path / "small", tok, manifest), manifest)
