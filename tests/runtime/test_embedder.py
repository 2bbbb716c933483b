"""Embedder behaviour: batching equals single, order, Matryoshka, prompts, empty inputs, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from runtime_helpers import TEXTS, min_cosine, mixed_texts
from tokenizers import Tokenizer

from embedrt import BatchingConfig, Embedder


def test_text_in_large_mixed_batch_equals_text_alone(qwen3_artefact: Path) -> None:
    texts = mixed_texts(60) + TEXTS
    # A small budget forces many micro-batches of different buckets and row counts.
    config = BatchingConfig(max_batch_tokens=512, max_batch_size=8, sequence_buckets=(16, 32, 64, 128))
    with Embedder.load(qwen3_artefact, batching=config) as embedder:
        together = embedder.embed(texts)
        alone = np.stack([embedder.embed([t])[0] for t in texts])
    assert together.shape == (len(texts), 64)
    # Row i is text i (order restored), and padding / batch-mates do not change it.
    assert min_cosine(together, alone) >= 0.99999
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_order_is_input_order_not_length_order(qwen3: Embedder) -> None:
    texts = ["short", "a much longer text " * 20, "mid length text here", ""]
    forward = qwen3.embed(texts)
    backward = qwen3.embed(texts[::-1])
    np.testing.assert_allclose(forward, backward[::-1], atol=2e-5)
    assert min(float(forward[i] @ forward[j]) for i in range(4) for j in range(i)) < 0.999  # rows differ


def test_matryoshka_truncates_then_renormalises(qwen3: Embedder) -> None:
    full = qwen3.embed(TEXTS)
    small = qwen3.embed(TEXTS, dimensions=32)
    assert small.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-6)
    expected = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-6)
    assert qwen3.embed(TEXTS, dimensions=64).shape == (len(TEXTS), 64)


def test_normalize_false_gives_raw_truncated_vectors(qwen3: Embedder) -> None:
    unit, norms = qwen3.infer(qwen3.prepare(TEXTS))
    raw = qwen3.embed(TEXTS, normalize=False)
    np.testing.assert_allclose(raw, unit * norms[:, None], rtol=1e-6)
    raw32 = qwen3.embed(TEXTS, normalize=False, dimensions=32)
    np.testing.assert_allclose(raw32, raw[:, :32], rtol=1e-6)  # truncated, not renormalised
    np.testing.assert_allclose(qwen3.embed(TEXTS), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_verbs_compose_to_embed(qwen3: Embedder) -> None:
    items = qwen3.prepare(TEXTS)
    assert all(e.ids.dtype == np.int64 and e.length == len(e.ids) for e in items)
    vectors, norms = qwen3.infer(items)
    assert vectors.shape == (len(TEXTS), 64) and norms.shape == (len(TEXTS),)
    np.testing.assert_array_equal(qwen3.finish(vectors, norms, dimensions=48), qwen3.embed(TEXTS, dimensions=48))


def test_query_instruction_format_is_exact(qwen3: Embedder, qwen3_artefact: Path) -> None:
    tok = Tokenizer.from_file(str(qwen3_artefact / "tokenizer.json"))
    [item] = qwen3.prepare(["what is rope?"], instruction="Find papers")
    assert item.ids.tolist() == tok.encode("Instruct: Find papers\nQuery:what is rope?").ids
    by_instruction = qwen3.embed(["what is rope?"], instruction="Find papers")
    np.testing.assert_array_equal(by_instruction, qwen3.embed(["Instruct: Find papers\nQuery:what is rope?"]))
    np.testing.assert_array_equal(qwen3.embed_queries(["what is rope?"], instruction="Find papers"), by_instruction)
    default = qwen3.manifest.prompts.default_instruction
    np.testing.assert_array_equal(qwen3.embed_queries(["what is rope?"]),
                                  qwen3.embed([f"Instruct: {default}\nQuery:what is rope?"]))
    np.testing.assert_array_equal(qwen3.embed_documents(["what is rope?"]), qwen3.embed(["what is rope?"]))


def test_truncation_keeps_the_appended_token(qwen3: Embedder) -> None:
    eot = qwen3.manifest.end_of_text.token_id
    [long, short] = qwen3.prepare([TEXTS[-1], "hi"])
    assert long.length == qwen3.manifest.max_length and long.ids[-1] == eot
    assert short.ids[-1] == eot


def test_empty_inputs(qwen3: Embedder, minilm: Embedder) -> None:
    assert qwen3.embed([]).shape == (0, 64)
    assert qwen3.embed([], dimensions=32).shape == (0, 32)
    assert qwen3.embed_queries([]).shape == (0, 64)
    # The empty string embeds the appended end-of-text token alone, like the reference.
    [item] = qwen3.prepare([""])
    assert item.ids.tolist() == [qwen3.manifest.end_of_text.token_id]
    vector = qwen3.embed([""])[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert minilm.prepare([""])[0].length == 2  # [CLS] [SEP]


def test_concurrent_callers_get_identical_results(qwen3: Embedder) -> None:
    texts = mixed_texts(40, seed=3)
    expected = qwen3.embed(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(qwen3.embed(texts))
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_info_describes_model_and_backend(qwen3: Embedder, minilm: Embedder) -> None:
    info = qwen3.info()
    assert info.dimensions_range == (32, 64) and info.dimensions == 64 and info.max_length == 128
    assert info.pooling == "last_token" and info.backend.backend == "onnxruntime" and info.backend.precision == "fp32"
    assert info.backend.device == "cpu" and info.backend.providers == ("CPUExecutionProvider",)
    assert info.query_template == "Instruct: {instruction}\nQuery:{text}" and info.default_instruction
    assert minilm.info().dimensions_range == (384, 384) and minilm.info().pooling == "mean"
    assert minilm.info().to_dict()["backend"]["graph"] == minilm.info().backend.graph != ""
    assert qwen3.backend_name == "onnxruntime" and qwen3.precision == "fp32"


def test_fp16_graph_loads_by_key(qwen3_artefact: Path, qwen3: Embedder) -> None:
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp16") as half:
        assert half.precision == "fp16"
        assert min_cosine(half.embed(TEXTS), qwen3.embed(TEXTS)) >= 0.999


def test_auto_picks_fp32_on_cpu(qwen3_artefact: Path) -> None:
    with Embedder.load(qwen3_artefact) as embedder:
        assert embedder.backend_name == "onnxruntime" and embedder.precision == "fp32"


def test_padding_never_exceeds_max_length(qwen3_artefact: Path, qwen3: Embedder) -> None:
    # A bucket past max_length could index past a model's position table: the batcher caps it.
    with Embedder.load(qwen3_artefact, batching=BatchingConfig(sequence_buckets=(16, 4096))) as embedder:
        backend = embedder._backend
        assert backend is not None
        shapes: list[tuple[int, int]] = []
        run = backend.run
        backend.run = lambda batch: (shapes.append(batch.shape), run(batch))[1]  # type: ignore[method-assign]
        got = embedder.embed([TEXTS[-1], "short"])
    assert shapes == [(2, 128)]
    np.testing.assert_allclose(got, qwen3.embed([TEXTS[-1], "short"]), atol=2e-5)
