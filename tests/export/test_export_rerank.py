"""`embedrt export` of rerankers (issue #15): which checkpoints are rerankers, what the manifest says, and
scores that match each model's own published scoring (the Qwen3-Reranker model card, sentence-transformers'
CrossEncoder) in FP32 and FP16, alone, batched, and over the maximum length."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import RERANK_MAX_LENGTH

from embedrt.manifest import Manifest, load_manifest
from embedrt_export import ExportError, ExportOptions, export_model
from embedrt_export.cli.options import export_options
from embedrt_export.export.rerank_reference import Pair, PairEncoder
from embedrt_export.export.rerank_spec import QWEN3_RERANK_PROMPT, _activation
from embedrt_export.export.spec import detect_spec
from embedrt_export.export.task import resolve_task

PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("what is the capital of France?", "The quick brown fox jumps over the lazy dog."),
    ("python function that adds two numbers", "def add(a, b):\n    return a + b"),
    ("a", ""),
]
LONG_DOCUMENT = "Retrieval systems embed passages once and compare them with every incoming query. " * 40
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3}


def _copy(src: Path, dst: Path, **config_changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _session(artefact: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(artefact / name), providers=["CPUExecutionProvider"])


# -- the fixtures ------------------------------------------------------------------------------------------


def test_reranker_fixtures_tokenize_like_the_real_checkpoints(qwen3_reranker_dir: Path,
                                                               cross_encoder_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_reranker_dir)
    # The post-processor appends nothing (only Qwen3-Embedding's appends <|endoftext|>).
    assert tok("hello world")["input_ids"] == tok("hello world", add_special_tokens=False)["input_ids"]
    for word in ("yes", "no"):
        assert tok.encode(word, add_special_tokens=False) == [tok.convert_tokens_to_ids(word)]
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.encode(special, add_special_tokens=False) == [tok.convert_tokens_to_ids(special)]
    config = AutoConfig.from_pretrained(qwen3_reranker_dir)
    assert config.architectures == ["Qwen3ForCausalLM"] and config.tie_word_embeddings
    assert "reranker" in qwen3_reranker_dir.name
    bert = AutoTokenizer.from_pretrained(cross_encoder_dir)
    enc = bert("What is the capital?", "Paris.")
    tokens = bert.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[:2] == ["[CLS]", "what"] and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2  # lower-cased
    first = tokens.index("[SEP]") + 1
    assert enc["token_type_ids"] == [0] * first + [1] * (len(tokens) - first)
    config = AutoConfig.from_pretrained(cross_encoder_dir)
    assert config.architectures == ["BertForSequenceClassification"] and config.num_labels == 1


# -- which checkpoints are rerankers -----------------------------------------------------------------------


def test_auto_detection_reads_the_checkpoint(qwen3_reranker_dir: Path, cross_encoder_dir: Path, qwen3_dir: Path,
                                              minilm_dir: Path, tmp_path: Path) -> None:
    assert resolve_task(str(cross_encoder_dir), cross_encoder_dir) == "rerank"  # *ForSequenceClassification
    assert resolve_task(str(qwen3_reranker_dir), qwen3_reranker_dir) == "rerank"  # *ForCausalLM named reranker
    assert resolve_task(str(qwen3_dir), qwen3_dir) == "embed"  # Qwen3Model
    assert resolve_task(str(minilm_dir), minilm_dir) == "embed"  # BertModel
    plain = _copy(qwen3_reranker_dir, tmp_path / "qwen3-causal-lm")
    # The name may come from the hub id the user gave, or from config.json's _name_or_path.
    assert resolve_task("Qwen/Qwen3-Reranker-0.6B", plain) == "rerank"
    named = _copy(qwen3_reranker_dir, tmp_path / "snapshot", _name_or_path="Qwen/Qwen3-Reranker-4B")
    assert resolve_task(str(named), named) == "rerank"
    # Qwen3-Embedding's config names Qwen3ForCausalLM too: its sentence-transformers files make it an embedder.
    embedder = _copy(qwen3_dir, tmp_path / "qwen3-embedding", architectures=["Qwen3ForCausalLM"])
    assert resolve_task(str(embedder), embedder) == "embed"


def test_a_causal_lm_with_no_signal_is_refused_naming_both_tasks(qwen3_reranker_dir: Path, tmp_path: Path) -> None:
    plain = _copy(qwen3_reranker_dir, tmp_path / "qwen3-causal-lm")
    with pytest.raises(ExportError, match="Qwen3ForCausalLM") as info:
        resolve_task(str(plain), plain)
    assert "`--task embed`" in str(info.value) and "`--task rerank`" in str(info.value)
    out = tmp_path / "art"
    with pytest.raises(ExportError, match="--task rerank"):
        export_model(str(plain), out, ExportOptions(), log=lambda _: None)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["qwen3-causal-lm"]


def test_an_explicit_task_wins(qwen3_reranker_dir: Path, tmp_path: Path) -> None:
    plain = _copy(qwen3_reranker_dir, tmp_path / "qwen3-causal-lm")
    assert resolve_task(str(plain), plain, "rerank") == "rerank"
    assert resolve_task(str(qwen3_reranker_dir), qwen3_reranker_dir, "embed") == "embed"
    with pytest.raises(ExportError, match="--task must be one of auto, embed, rerank"):
        resolve_task(str(plain), plain, "classify")
    from embedrt.cli import build_parser

    args = build_parser().parse_args(["export", "m", "--out", "o", "--task", "rerank"])
    assert export_options(args).task == "rerank" and ExportOptions().task == "auto"


@pytest.mark.parametrize(("config", "want"), [
    ({}, "sigmoid"),  # one label: CrossEncoder's default
    ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, "none"),
    ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, "sigmoid"),
    ({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}, "none"),  # before v4
])
def test_cross_encoder_activation_is_what_sentence_transformers_applies(config: dict[str, Any], want: str) -> None:
    assert _activation(config) == want


@pytest.mark.parametrize(("which", "change", "match"), [
    ("cross", {"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Tanh"}}, "activation"),
    ("cross", {"id2label": {"0": "entailment", "1": "contradiction"}}, "2 labels"),
    ("cross", {"architectures": ["BertModel"]}, "needs a cross-encoder"),
    ("qwen3", {"architectures": ["Qwen3Model"]}, "Qwen3ForCausalLM"),
])
def test_checkpoints_that_are_no_rerankers_are_refused(qwen3_reranker_dir: Path, cross_encoder_dir: Path,
                                                       tmp_path: Path, which: str, change: dict[str, Any],
                                                       match: str) -> None:
    src = cross_encoder_dir if which == "cross" else qwen3_reranker_dir
    with pytest.raises(ExportError, match=match):
        detect_spec(_copy(src, tmp_path / "variant-reranker", **change), task="rerank")


def test_a_qwen3_reranker_needs_its_own_tokenizer(qwen3_reranker_dir: Path, qwen3_dir: Path, tmp_path: Path) -> None:
    """Qwen3-Embedding's tokenizer appends <|endoftext|>: inside the card's prompt that would change every score."""
    variant = _copy(qwen3_reranker_dir, tmp_path / "qwen3-reranker")
    shutil.copy(qwen3_dir / "tokenizer.json", variant / "tokenizer.json")
    with pytest.raises(ExportError, match="adds special tokens of its own"):
        detect_spec(variant, task="rerank")


def test_hidden_states_are_refused_for_a_reranker(cross_encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--with-hidden-states is for embedding models"):
        export_model(str(cross_encoder_dir), tmp_path / "art", ExportOptions(with_hidden_states=True),
                     log=lambda _: None)
    assert not (tmp_path / "art").exists()


# -- the manifest ---------------------------------------------------------------------------------------------


def _common_manifest_checks(m: Manifest, artefact: Path) -> None:
    assert m.task == "rerank" and m.rerank is not None
    assert [(t.name, t.dtype, t.shape) for t in m.outputs] == [("score", "float32", ("batch",)),
                                                                ("logit", "float32", ("batch",))]
    assert all(t.dtype == "int64" and t.shape == ("batch", "sequence") for t in m.inputs)
    assert m.max_length == RERANK_MAX_LENGTH and m.matryoshka is None and m.normalize is False
    assert set(m.graphs) == set(m.eager_graphs) == {"fp32", "fp16"}
    assert m.export["attention"] == ["fused", "eager"]
    assert Manifest.from_dict(json.loads((artefact / "manifest.json").read_text())) == m
    assert load_manifest(artefact) == m


def test_qwen3_reranker_manifest(qwen3_reranker_artefact: Path, qwen3_reranker_dir: Path) -> None:
    from tokenizers import Tokenizer

    m = load_manifest(qwen3_reranker_artefact)
    _common_manifest_checks(m, qwen3_reranker_artefact)
    assert m.rerank is not None
    assert m.rerank.prompt == QWEN3_RERANK_PROMPT and m.rerank.prompt.encoding == "template"
    assert m.rerank.prompt.default_instruction == ("Given a web search query, retrieve relevant passages that "
                                                   "answer the query")
    tok = Tokenizer.from_file(str(qwen3_reranker_dir / "tokenizer.json"))
    assert m.rerank.label_token_ids == {"yes": tok.token_to_id("yes"), "no": tok.token_to_id("no")}
    assert m.rerank.activation == "sigmoid"
    assert m.input_names == ("input_ids", "attention_mask")
    assert m.architecture == "qwen3" and m.pooling == "last_token" and m.source["architecture"] == "Qwen3ForCausalLM"
    assert m.end_of_text.token is None and not m.end_of_text.appended_by_tokenizer
    assert m.graphs["fp32"].padding_side == "right" and m.eager_graphs["fp32"].padding_side is None


def test_cross_encoder_manifest(cross_encoder_artefact: Path) -> None:
    m = load_manifest(cross_encoder_artefact)
    _common_manifest_checks(m, cross_encoder_artefact)
    assert m.rerank is not None
    assert m.rerank.prompt.encoding == "text_pair" and m.rerank.label_token_ids == {}
    assert m.rerank.activation == "sigmoid"
    assert m.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert m.architecture == "bert" and m.pooling == "cls"
    assert "vocab.txt" in m.tokenizer_files and (cross_encoder_artefact / "tokenizer.json").is_file()


# -- parity, as the export measured it --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3", "cross"])
def test_export_parity_figures_are_within_the_gates(family: str, qwen3_reranker_artefact: Path,
                                                    cross_encoder_artefact: Path) -> None:
    m = load_manifest(qwen3_reranker_artefact if family == "qwen3" else cross_encoder_artefact)
    for form, graphs in (("fused", m.graphs), ("eager", m.eager_graphs)):
        for precision in ("fp32", "fp16"):
            report = graphs[precision].parity
            assert report["passed"] and report["metric"] == "max_abs_score_diff"
            assert report["max_abs_score_diff"] <= TOLERANCE[precision] == report["threshold_max_abs_score_diff"]
            if precision == "fp16":  # gated against the closer of FP32 and FP16-rounded weights; both recorded
                rounding = report["fp16_weight_rounding"]["max_abs_score_diff"]
                assert 0 < rounding < TOLERANCE["fp16"]
                against = {"pytorch-fp32": report["vs_fp32"], "pytorch-fp16-weights": report["vs_fp16_weights"]}
                assert report["max_abs_score_diff"] == min(d["max_abs_score_diff"] for d in against.values())
                assert report["max_abs_score_diff"] == against[report["reference"]]["max_abs_score_diff"]
            else:
                assert report["reference"] == "pytorch-fp32" and "vs_fp32" not in report
            assert report["max_abs_logit_diff"] <= (1e-4 if precision == "fp32" else 2e-2)  # recorded, not gated
            # Every fixed pair, the over-long one and (Qwen3) a custom instruction among them.
            assert report["pairs"] == (10 if family == "qwen3" else 9)
            # Random weights still spread the scores: parity on scores that all sit at 0.5 would prove little.
            low, high = report["reference_score_range"]
            assert high - low > 0.1
            modes = set(report["per_mode_max_abs_score_diff"])
            # Left padding is checked where it is exact: causal, relative positions, and a mask-taking graph.
            left = family == "qwen3" and form == "eager"
            assert modes == ({"single", "batch_left", "batch_right"} if left else {"single", "batch_right"})
    assert m.graphs["fp16"].parity["fp32_islands"] == "lean"


def test_a_graph_off_by_more_than_the_gate_fails_naming_the_pair() -> None:
    from embedrt_export.errors import ParityError
    from embedrt_export.export.rerank_parity import check, measure
    from embedrt_export.export.rerank_reference import EncodedPairs, Scored

    pairs = [Pair("q", f"document {i}") for i in range(3)] + [Pair("q", "a long document")]
    reference = Scored(np.array([0.1, 0.5, 0.9, 0.3]), np.zeros(4), [], None)
    index = {pair: i for i, pair in enumerate(pairs)}

    def encode(batch: Any, side: str) -> EncodedPairs:  # the row's pair index stands in for its token ids
        return EncodedPairs(np.array([[index[p]] for p in batch]), np.ones((len(batch), 1), np.int64))

    def run(enc: EncodedPairs) -> np.ndarray:  # right alone, off by 0.01 on pair 2 inside a batch
        rows = enc.input_ids[:, 0]
        scores = reference.scores[rows] + np.where((rows == 2) & (len(rows) > 1), 0.01, 0.0)
        return np.stack([scores, np.zeros_like(scores)])

    report = measure(pairs, reference, encode, run, "fp16", long_index=3)
    assert not report["passed"] and (report["worst_pair_index"], report["worst_mode"]) == (2, "batch_right")
    assert report["per_mode_max_abs_score_diff"]["single"] == 0.0
    with pytest.raises(ParityError, match=r"fp16 reranker graph fails parity: .* on pair 2 .*--dtype fp32"):
        check(report)


def test_an_fp16_graph_is_gated_on_what_it_computes_not_on_what_fp16_weights_cost() -> None:
    """Gated against the closer of FP32 and FP16-rounded weights: a graph 3e-3 from FP32 passes when FP16
    storage alone costs 2.5e-3 and the graph adds 5e-4 (against FP32 alone it would fail); one 1e-3 from
    FP32 passes against FP32; one 3e-3 from the rounded weights and 5.5e-3 from FP32 fails."""
    from embedrt_export.export.rerank_parity import measure
    from embedrt_export.export.rerank_reference import EncodedPairs, Scored

    pairs = [Pair("q", f"document {i}") for i in range(4)]
    fp32 = Scored(np.array([0.1, 0.5, 0.9, 0.3]), np.array([-2.0, 0.0, 2.0, -1.0]), [], None)
    rounded = Scored(fp32.scores + 2.5e-3, fp32.logits + 1e-2, [], None)

    def graph(offset: float, base: Scored = rounded) -> Any:
        def run(enc: EncodedPairs) -> np.ndarray:
            rows = enc.input_ids[:, 0]
            return np.stack([base.scores[rows] + offset, base.logits[rows]])
        return run

    def encode(batch: Any, side: str) -> EncodedPairs:
        return EncodedPairs(np.array([[pairs.index(p)] for p in batch]), np.ones((len(batch), 1), np.int64))

    report = measure(pairs, fp32, encode, graph(5e-4), "fp16", long_index=3, fp16_weights=rounded)
    assert report["passed"] and report["reference"] == "pytorch-fp16-weights"
    assert report["max_abs_score_diff"] == pytest.approx(5e-4)
    assert report["vs_fp32"]["max_abs_score_diff"] == pytest.approx(3e-3)
    assert report["fp16_weight_rounding"] == {"max_abs_score_diff": pytest.approx(2.5e-3),
                                              "max_abs_logit_diff": pytest.approx(1e-2)}
    assert report["vs_fp16_weights"]["max_abs_score_diff"] == pytest.approx(5e-4)
    assert not measure(pairs, fp32, encode, graph(5e-4), "fp16", long_index=3)["passed"]
    near_fp32 = measure(pairs, fp32, encode, graph(1e-3, fp32), "fp16", long_index=3, fp16_weights=rounded)
    assert near_fp32["passed"] and near_fp32["reference"] == "pytorch-fp32"
    assert near_fp32["max_abs_score_diff"] == pytest.approx(1e-3)
    assert not measure(pairs, fp32, encode, graph(3e-3), "fp16", long_index=3, fp16_weights=rounded)["passed"]


def test_the_fp16_weights_reference_leaves_the_fp32_model_intact(qwen3_reranker_dir: Path) -> None:
    """It rounds in place, then loads the FP32 weights again: what is traced afterwards is FP32."""
    from embedrt_export.export.rerank_reference import RerankReference

    spec = detect_spec(qwen3_reranker_dir, RERANK_MAX_LENGTH, task="rerank")
    ref = RerankReference(qwen3_reranker_dir, spec)
    pairs = [Pair("what is the capital of France?", "Paris is the capital of France."), Pair("a", "b")]
    before = ref.score_alone(pairs)
    weights = {k: v.clone() for k, v in ref.model.state_dict().items()}
    rounded = ref.score_alone_fp16_weights(pairs)
    assert 0 < np.abs(rounded.logits - before.logits).max() < 0.05
    assert all(torch.equal(weights[k], v) for k, v in ref.model.state_dict().items())
    head = ref.model.get_output_embeddings().weight
    assert head is ref.model.get_input_embeddings().weight  # tied again, as the checkpoint says
    np.testing.assert_array_equal(ref.score_alone(pairs).scores, before.scores)


# -- the graphs against the model's own scoring, written here once more -------------------------------------------


def _card_scores(model_dir: Path, pairs: list[tuple[str, str]], max_length: int) -> tuple[np.ndarray, Any]:
    """The Qwen3-Reranker model card's code, batch and left padding included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(QWEN3_RERANK_PROMPT.prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(QWEN3_RERANK_PROMPT.suffix, add_special_tokens=False)
    task = "Given a web search query, retrieve relevant passages that answer the query"
    formatted = [f"<Instruct>: {task}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tokenizer(formatted, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    with warnings.catch_warnings():  # "max_length is ignored when padding=True": the card passes it anyway
        warnings.simplefilter("ignore")
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
    batch_scores = torch.stack([batch_scores[:, token_false_id], batch_scores[:, token_true_id]], dim=1)
    scores = torch.nn.functional.log_softmax(batch_scores, dim=1)[:, 1].exp()
    return scores.numpy(), inputs


def _right_padded(inputs: Any) -> dict[str, np.ndarray]:
    """The card's left-padded batch re-padded on the right (the fused graph is exact for right padding only)."""
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    out_ids, out_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i in range(len(ids)):
        row = ids[i][mask[i] == 1]
        out_ids[i, : len(row)], out_mask[i, : len(row)] = row, 1
    return {"input_ids": out_ids, "attention_mask": out_mask}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_qwen3_reranker_matches_the_model_card(qwen3_reranker_dir: Path, qwen3_reranker_artefact: Path,
                                               precision: str) -> None:
    pairs = [*PAIRS, ("what is the capital of France?", LONG_DOCUMENT)]
    want, inputs = _card_scores(qwen3_reranker_dir, pairs, RERANK_MAX_LENGTH)
    assert inputs["input_ids"].shape[1] == RERANK_MAX_LENGTH  # the long document was truncated by the card too
    left = {"input_ids": inputs["input_ids"].numpy(), "attention_mask": inputs["attention_mask"].numpy()}
    eager = _session(qwen3_reranker_artefact, f"model.{precision}.eager.onnx")
    fused = _session(qwen3_reranker_artefact, f"model.{precision}.onnx")
    score, logit = eager.run(["score", "logit"], left)
    np.testing.assert_allclose(score, want, atol=TOLERANCE[precision])
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-logit)), atol=1e-6)  # score = sigmoid(yes - no)
    np.testing.assert_allclose(fused.run(["score"], _right_padded(inputs))[0], want, atol=TOLERANCE[precision])


def test_cross_encoder_matches_sentence_transformers(cross_encoder_dir: Path, cross_encoder_artefact: Path) -> None:
    from sentence_transformers import CrossEncoder

    pairs = [*PAIRS, ("what is the capital of France?", LONG_DOCUMENT)]
    model = CrossEncoder(str(cross_encoder_dir), max_length=RERANK_MAX_LENGTH, device="cpu")
    want = model.predict(pairs)
    tok = model.tokenizer
    features = tok([q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True,
                   max_length=RERANK_MAX_LENGTH, return_tensors="np")
    feeds = {k: features[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for name, precision in (("model.fp32.onnx", "fp32"), ("model.fp32.eager.onnx", "fp32"),
                            ("model.fp16.onnx", "fp16"), ("model.fp16.eager.onnx", "fp16")):
        score = _session(cross_encoder_artefact, name).run(["score"], feeds)[0]
        np.testing.assert_allclose(score, want, atol=TOLERANCE[precision], err_msg=name)


def test_an_identity_cross_encoder_outputs_its_logit(cross_encoder_dir: Path, cross_encoder_artefact: Path,
                                                     tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    src = _copy(cross_encoder_dir, tmp_path / "ce-identity",
                sentence_transformers={"activation_fn": "torch.nn.modules.linear.Identity"})
    m = export_model(str(src), tmp_path / "art", ExportOptions(dtypes=("fp32",), attention="eager", max_length=64),
                     log=lambda _: None)
    assert m.rerank is not None and m.rerank.activation == "none"
    want = CrossEncoder(str(src), max_length=64, device="cpu").predict(PAIRS)
    enc = PairEncoder(src / "tokenizer.json", m.rerank.prompt, 64, m.pad_token_id, True)
    feeds = enc.batch([Pair(q, d) for q, d in PAIRS], "right").feeds()
    score, logit = _session(tmp_path / "art", "model.fp32.onnx").run(["score", "logit"], feeds)
    np.testing.assert_array_equal(score, logit)
    np.testing.assert_allclose(score, want, atol=1e-4)
    # The same weights exported with the default activation: the same logit, its sigmoid as the score.
    sigmoid_score, same_logit = _session(cross_encoder_artefact, "model.fp32.onnx").run(["score", "logit"], feeds)
    np.testing.assert_allclose(same_logit, logit, atol=1e-6)
    np.testing.assert_allclose(sigmoid_score, 1 / (1 + np.exp(-logit)), atol=1e-6)


@pytest.mark.parametrize("family", ["qwen3", "cross"])
def test_batched_equals_alone_and_a_pair_over_max_length_is_cut_in_the_middle(
        family: str, qwen3_reranker_artefact: Path, cross_encoder_artefact: Path) -> None:
    artefact = qwen3_reranker_artefact if family == "qwen3" else cross_encoder_artefact
    m = load_manifest(artefact)
    assert m.rerank is not None
    enc = PairEncoder(artefact / "tokenizer.json", m.rerank.prompt, m.max_length, m.pad_token_id,
                      "token_type_ids" in m.input_names)
    pairs = [Pair(q, d) for q, d in PAIRS] + [Pair("what is the capital of France?", LONG_DOCUMENT)]
    long_ids, _ = enc.encode(pairs[-1])
    assert len(long_ids) == m.max_length
    if family == "qwen3":  # the prompt's prefix and suffix are kept whole; only the middle was cut
        assert long_ids[: len(enc.prefix)] == enc.prefix and long_ids[-len(enc.suffix):] == enc.suffix
    for name in ("model.fp32.onnx", "model.fp32.eager.onnx", "model.fp16.onnx"):
        session = _session(artefact, name)
        alone = np.array([session.run(["score"], enc.batch([p], "right").feeds())[0][0] for p in pairs])
        batched = session.run(["score"], enc.batch(pairs, "right").feeds())[0]
        np.testing.assert_allclose(batched, alone, atol=1e-5 if "fp32" in name else 1e-3, err_msg=name)


# -- the graphs themselves ------------------------------------------------------------------------------------------


def test_qwen3_reranker_graph_reads_two_rows_of_the_lm_head_only(qwen3_reranker_artefact: Path) -> None:
    """No full-vocabulary logits anywhere: no MatMul / Gemm reads a [vocab, hidden] (or transposed) weight."""
    m = load_manifest(qwen3_reranker_artefact)
    for graph in (*m.graphs.values(), *m.eager_graphs.values()):
        model = onnx.load(str(qwen3_reranker_artefact / graph.file), load_external_data=False)
        shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
        vocab = max(d for dims in shapes.values() for d in dims)  # the embedding table's rows
        for node in model.graph.node:
            if node.op_type in ("MatMul", "Gemm"):
                assert not any(vocab in shapes.get(name, ()) for name in node.input), (graph.file, node.name)
        assert sum(1 for dims in shapes.values() if vocab in dims) == 1  # the embedding table, read by Gather


def test_reranker_fp16_graphs_keep_their_score_tail_in_fp32(qwen3_reranker_artefact: Path,
                                                             cross_encoder_artefact: Path) -> None:
    for artefact in (qwen3_reranker_artefact, cross_encoder_artefact):
        model = onnx.load(str(artefact / "model.fp16.onnx"), load_external_data=False)
        assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT64}
        assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
        for value in (*model.graph.input, *model.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        types.update({init.name: init.data_type for init in model.graph.initializer})
        producers = {out: n for n in model.graph.node for out in n.output}
        fp32 = onnx.TensorProto.FLOAT
        score = producers["score"]  # no Cast back from FP16 before the graph output: computed in FP32
        assert score.op_type == "Sigmoid" and types.get(score.input[0], fp32) == fp32
        # The logit itself: Qwen3's dot product with the yes - no row, the cross-encoder's classifier Gemm.
        tail = producers[score.input[0]]
        while tail.op_type in ("Gather", "Squeeze", "Reshape", "Add"):
            tail = producers[tail.input[0]]
        assert tail.op_type in ("MatMul", "Gemm"), tail.op_type
        assert all(types.get(name, fp32) == fp32 and not name.endswith("__fp16") for name in tail.input), tail.name
