"""Reranker behaviour on tiny exported rerankers: scores against PyTorch, batching, ranking, long documents, errors."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from rerank_helpers import CrossEncoderReference, Qwen3RerankerReference

from embedrt import BackendConfig, BatchingConfig, Embedder, Reranker, RerankResult
from embedrt.errors import ArtefactError, InputTooLongError, InvalidFieldError, UnavailableError
from embedrt.info import RerankerInfo
from embedrt.manifest import MANIFEST_NAME

QUERY = "what is the capital of France?"
FILLER = "The quick brown fox jumps over the lazy dog. "
PAIRS = [
    (QUERY, "Paris is the capital and largest city of France."),
    (QUERY, "The quick brown fox jumps over the lazy dog."),
    ("Wie springt der Fuchs?", "Der schnelle braune Fuchs springt über den faulen Hund. Быстрая лиса. 敏捷的棕色狐狸"),
    ("python function that adds two numbers", "def add(a, b):\n    return a + b"),
    ("launch 🚀", "Launch day 🚀🔥 — emoji, accents (café, naïve) and CJK: 日本語のテキスト"),
    ("a", "b"),
    (QUERY, ""),
    ("", "A document without a query."),
    ("{document} stays text", "SELECT id, name FROM users WHERE active = 1;"),
    (QUERY, FILLER * 60),  # longer than either model's input
]
# FP32 runtime against the PyTorch FP32 reference: largest |score difference| allowed (issue #15).
FP32_SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def qwen3_reference(qwen3_reranker_dir: Path, qwen3_reranker: Reranker) -> Qwen3RerankerReference:
    return Qwen3RerankerReference(qwen3_reranker_dir, qwen3_reranker.spec.prompt, qwen3_reranker.manifest.max_length)


@pytest.fixture(scope="module")
def cross_reference(cross_encoder_dir: Path, cross_encoder: Reranker) -> CrossEncoderReference:
    return CrossEncoderReference(cross_encoder_dir, cross_encoder.manifest.max_length)


def test_qwen3_reranker_scores_match_the_model_card(qwen3_reranker: Reranker,
                                                    qwen3_reference: Qwen3RerankerReference) -> None:
    scores = qwen3_reranker.score(PAIRS)
    want, want_logits = qwen3_reference(PAIRS)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    delta = float(np.abs(scores - want).max())
    print(f"Qwen3-Reranker FP32 max |score delta| vs PyTorch: {delta:.2e} (scores {want.min():.3f}..{want.max():.3f})")
    assert delta <= FP32_SCORE_TOLERANCE
    assert float(np.ptp(want)) > 0.05  # the fixture's scores spread: a wrong pair would show
    items = qwen3_reranker.prepare(PAIRS)
    np.testing.assert_allclose(qwen3_reranker.infer(items)[1], want_logits, atol=1e-3)
    custom = qwen3_reranker.score(PAIRS[:4], instruction="Given a question, find its answer")
    want_custom, _ = qwen3_reference(PAIRS[:4], instruction="Given a question, find its answer")
    assert float(np.abs(custom - want_custom).max()) <= FP32_SCORE_TOLERANCE
    assert float(np.abs(custom - scores[:4]).max()) > 0  # the instruction reached the model


def test_cross_encoder_scores_match_the_model(cross_encoder: Reranker, cross_reference: CrossEncoderReference) -> None:
    scores = cross_encoder.score(PAIRS)
    want, want_logits = cross_reference(PAIRS)
    delta = float(np.abs(scores - want).max())
    print(f"cross-encoder FP32 max |score delta| vs PyTorch: {delta:.2e} (scores {want.min():.3f}..{want.max():.3f})")
    assert delta <= FP32_SCORE_TOLERANCE
    assert float(np.ptp(want)) > 0.05
    np.testing.assert_allclose(cross_encoder.infer(cross_encoder.prepare(PAIRS))[1], want_logits, atol=1e-3)
    # The document's token type ids reach the graph: the same ids with a zero segment score otherwise.
    [item] = cross_encoder.prepare(PAIRS[:1])
    assert item.type_ids is not None and item.type_ids.max() == 1


@pytest.mark.parametrize("name", ["qwen3_reranker_artefact", "cross_encoder_artefact"])
def test_a_pair_in_a_mixed_batch_scores_as_alone(name: str, request: pytest.FixtureRequest) -> None:
    rng = np.random.default_rng(0)
    words = " ".join(d for _, d in PAIRS[:5]).split()
    pairs = PAIRS + [(" ".join(rng.choice(words, 3)), " ".join(rng.choice(words, int(n))))
                     for n in rng.choice([0, 1, 5, 20, 60, 200], size=30)]
    # A small budget: many micro-batches of different buckets and row counts, padded on the manifest's side.
    config = BatchingConfig(max_batch_tokens=512, max_batch_size=8, sequence_buckets=(16, 32, 64, 128, 256))
    with Reranker.load(request.getfixturevalue(name), "onnxruntime", precision="fp32", batching=config) as model:
        together = model.score(pairs)
        alone = np.array([model.score([p])[0] for p in pairs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together.shape == (len(pairs),) and float(np.ptp(together)) > 0


def test_left_padding_as_the_model_card_scores_the_same(qwen3_reranker: Reranker, qwen3_reranker_artefact: Path,
                                                       tmp_path: Path) -> None:
    """The padding side is the manifest's: the export pads Qwen3-Reranker on the right (its fused graph
    takes no mask); the card pads on the left, which the eager graph takes too."""
    left = tmp_path / "left"
    shutil.copytree(qwen3_reranker_artefact, left)
    data = json.loads((left / MANIFEST_NAME).read_text())
    (left / MANIFEST_NAME).write_text(json.dumps({**data, "padding_side": "left"}))
    config = BackendConfig(precision="fp32", device="cpu", attention="eager")
    with Reranker.load(left, "onnxruntime", backend_config=config) as model:
        assert model.manifest.padding_side == "left"
        batch = model.prepare(PAIRS)
        np.testing.assert_allclose(model.infer(batch)[0], qwen3_reranker.score(PAIRS), atol=1e-5)


def test_rerank_orders_best_first_and_keeps_input_order_on_ties(qwen3_reranker: Reranker) -> None:
    docs = [d for _, d in PAIRS[:6]]
    scores = qwen3_reranker.score([(QUERY, d) for d in docs])
    results = qwen3_reranker.rerank(QUERY, docs)
    assert [r.index for r in results] == sorted(range(len(docs)), key=lambda i: -scores[i])
    assert all(isinstance(r, RerankResult) for r in results)
    np.testing.assert_allclose([r.score for r in results], scores[[r.index for r in results]], atol=1e-6)
    assert all(r.score == pytest.approx(1 / (1 + np.exp(-r.logit)), abs=1e-6) for r in results)  # sigmoid
    assert [r.index for r in qwen3_reranker.rerank(QUERY, docs, top_n=2)] == [r.index for r in results[:2]]
    assert len(qwen3_reranker.rerank(QUERY, docs, top_n=100)) == len(docs)  # clamped to the count
    twins = qwen3_reranker.rerank(QUERY, ["same text", "other text", "same text", "same text"])
    same = [r.index for r in twins if r.index != 1]
    assert same == [0, 2, 3]  # equal scores: the documents' own order


@pytest.mark.parametrize("name", ["qwen3_reranker", "cross_encoder"])
def test_max_window_finds_a_relevant_tail(name: str, request: pytest.FixtureRequest) -> None:
    model: Reranker = request.getfixturevalue(name)
    candidates = [d for _, d in PAIRS[:6] if d] + ["Paris, France", "capital city", "def add(a, b)"]
    passage_scores = model.score([(QUERY, c) for c in candidates])
    tail = candidates[int(np.argmax(passage_scores))]  # what this random model finds most relevant
    filler = candidates[int(np.argmin(passage_scores))] + " "
    document = filler * 40 + tail  # the tail lies far past what one input holds
    truncated, windowed = (model.rerank(QUERY, [document], long_documents=mode)[0]
                           for mode in ("truncate", "max_window"))
    assert truncated.score == pytest.approx(float(model.score([(QUERY, document)])[0]), abs=1e-6)
    # The document's score is its best window's, and the best window holds the tail.
    windows = model._pairs.windows(QUERY, document)
    assert len(windows) > 2
    window_scores, window_logits = model.infer(windows)
    assert windowed.score == pytest.approx(float(window_scores.max()), abs=1e-6)
    assert windowed.logit == pytest.approx(float(window_logits.max()), abs=1e-5)
    print(f"{name}: truncate {truncated.score:.4f}, max_window {windowed.score:.4f} over {len(windows)} windows")
    assert windowed.score > truncated.score
    # Documents that fit are scored once, exactly as with truncation; the results keep their own indices.
    docs = [document, "Paris is the capital and largest city of France.", FILLER]
    mixed = {r.index: r.score for r in model.rerank(QUERY, docs, long_documents="max_window")}
    plain = {r.index: r.score for r in model.rerank(QUERY, docs)}
    assert mixed[1] == plain[1] and mixed[2] == plain[2] and mixed[0] == pytest.approx(windowed.score, abs=1e-6)


def test_truncate_false_names_the_over_long_pair(cross_encoder: Reranker) -> None:
    with pytest.raises(InputTooLongError, match=r"^pair 9 has (at least )?\d+ tokens, more than the model's limit "
                                                r"of 64") as info:
        cross_encoder.score(PAIRS, truncate=False)
    assert info.value.index == 9
    assert cross_encoder.score(PAIRS[:9], truncate=False).shape == (9,)


@pytest.mark.parametrize(("call", "field", "match"), [
    (lambda m: m.rerank(QUERY, []), "documents", "is empty"),
    (lambda m: m.rerank(QUERY, "one document"), "documents", "not a single string"),
    (lambda m: m.rerank(QUERY, ["ok", 7]), "documents", "document 1 is int, not str"),
    (lambda m: m.rerank(QUERY, ["ok", "bad \ud800"]), "documents", "document 1 is not valid UTF-8"),
    (lambda m: m.rerank(QUERY, None), "documents", "not NoneType"),
    (lambda m: m.rerank("", ["doc"]), "query", "is empty"),
    (lambda m: m.rerank("  \n", ["doc"]), "query", "is empty"),
    (lambda m: m.rerank(None, ["doc"]), "query", "is NoneType, not str"),
    (lambda m: m.rerank(QUERY, ["doc"], top_n=0), "top_n", "at least 1"),
    (lambda m: m.rerank(QUERY, ["doc"], top_n=-3), "top_n", "at least 1"),
    (lambda m: m.rerank(QUERY, ["doc"], top_n=True), "top_n", "whole number"),
    (lambda m: m.rerank(QUERY, ["doc"], top_n="2"), "top_n", "whole number"),
    (lambda m: m.rerank(QUERY, ["doc"], long_documents="chunk"), "long_documents", "truncate, max_window"),
    (lambda m: m.rerank(QUERY, ["doc"], instruction="Find"), "instruction", "takes no instruction"),
    (lambda m: m.score([(QUERY, "doc")], instruction="Find"), "instruction", "takes no instruction"),
    (lambda m: m.score("query and document"), "pairs", "not str"),
    (lambda m: m.score([(QUERY, None)]), "pairs", "the document of pair 0 is NoneType"),
])
def test_bad_input_is_refused_with_its_field(cross_encoder: Reranker, call, field: str, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidFieldError, match=match) as info:
        call(cross_encoder)
    assert info.value.field == field


def test_empty_and_edge_inputs(qwen3_reranker: Reranker) -> None:
    empty = qwen3_reranker.score([])
    assert empty.shape == (0,) and empty.dtype == np.float32
    assert qwen3_reranker.score([("", "")]).shape == (1,)  # the prompt alone still scores, as the card's does
    [only] = qwen3_reranker.rerank(QUERY, ["single"])
    assert only.index == 0


def test_each_class_refuses_the_others_artefact(qwen3_artefact: Path, cross_encoder_artefact: Path) -> None:
    with pytest.raises(ArtefactError, match=r"is an embedding model, not a rerank model: load it with "
                                            r"embedrt\.Embedder\.load"):
        Reranker.load(qwen3_artefact)
    with pytest.raises(ArtefactError, match=r"is a rerank model, not an embedding model: load it with "
                                            r"embedrt\.Reranker\.load"):
        Embedder.load(cross_encoder_artefact)


def test_info_lifecycle_and_threads(cross_encoder_artefact: Path) -> None:
    with Reranker.load(cross_encoder_artefact) as model:  # backend and precision "auto": ORT CPU, fp32
        info = model.info()
        assert isinstance(info, RerankerInfo)
        assert (info.task, info.pair_encoding, info.activation) == ("rerank", "text_pair", "sigmoid")
        assert info.max_length == 64  # tests/conftest.py exports it so
        assert (info.backend.backend, info.backend.device, info.backend.precision) == ("onnxruntime", "cpu", "fp32")
        assert info.to_dict()["backend"]["backend"] == "onnxruntime"
        assert repr(model).startswith("Reranker('tiny-cross-encoder', backend='onnxruntime'")
        want = model.score(PAIRS)
        got: list[np.ndarray] = []
        threads = [threading.Thread(target=lambda: got.append(model.score(PAIRS))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and all(np.array_equal(g, want) for g in got)
    with pytest.raises(UnavailableError, match="this Reranker is closed"):
        model.score(PAIRS[:1])
    model.close()  # idempotent
    assert model.info().backend.backend == "onnxruntime"  # as it last ran
