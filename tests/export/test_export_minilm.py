"""Real all-MiniLM-L6-v2 weights: the exported graph matches sentence-transformers' encode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from embedrt.manifest import load_manifest

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "Les embeddings représentent le sens des phrases.",
    "def f(x): return x * 2",
    "🙂",
    "word " * 400,  # longer than the 256-token limit: truncated like sentence-transformers does
]


def test_minilm_manifest(minilm_artefact: Path) -> None:
    m = load_manifest(minilm_artefact)
    assert m.architecture == "bert" and m.pooling == "mean" and m.normalize
    assert m.hidden_size == 384 and m.max_length == 256
    assert m.matryoshka is None and m.dimensions_range == (384, 384)
    assert m.end_of_text.appended_by_tokenizer is False
    assert m.prompts.format_query("x") == "x"
    assert m.graphs["fp32"].parity["min_cosine"] >= 0.99999
    assert m.graphs["fp16"].parity["min_cosine"] >= 0.999


def test_minilm_fused_graph_keeps_its_padding_mask(minilm_artefact: Path) -> None:
    """BERT gets the fused opset-23 graph too (faster on ONNX Runtime CPU, docs/benchmarks.md "fused"), with
    its key-padding mask: attention is bidirectional, so pads must be masked, not left to causality."""
    m = load_manifest(minilm_artefact)
    assert m.graphs["fp32"].attention == "fused" and set(m.eager_graphs) == {"fp32", "fp16"}
    layers = 6
    for key in ("fp32", "fp16"):
        nodes = onnx.load(str(minilm_artefact / m.graphs[key].file), load_external_data=False).graph.node
        attention = [n for n in nodes if n.op_type == "Attention"]
        assert len(attention) == layers and not any(n.op_type == "Softmax" for n in nodes)
        for node in attention:
            assert len(node.input) > 3 and node.input[3], f"{node.name} lost its padding mask"
            assert all(a.i == 0 for a in node.attribute if a.name == "is_causal")


def test_minilm_matches_sentence_transformers(minilm_dir: Path, minilm_artefact: Path) -> None:
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    tok = Tokenizer.from_file(str(minilm_artefact / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    session = ort.InferenceSession(str(minilm_artefact / "model.fp32.onnx"))
    got = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= 0.99999, cosines


def test_minilm_parity_uses_right_padding_only(minilm_artefact: Path) -> None:
    """Absolute position embeddings shift under left padding (in the reference too): not a valid mode."""
    modes = load_manifest(minilm_artefact).graphs["fp32"].parity["per_mode_min_cosine"]
    assert set(modes) == {"single", "batch_right"}
