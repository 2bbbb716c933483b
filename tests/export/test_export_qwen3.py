"""Export of tiny random Qwen3 models: manifest, parity, dynamic axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from embedrt.manifest import Manifest, load_manifest
from embedrt_export import ExportOptions, export_model
from embedrt_export.export.wrapper import reference_pool


def test_manifest_describes_qwen3(qwen3_artefact: Path) -> None:
    m = load_manifest(qwen3_artefact)
    assert m.architecture == "qwen3"
    assert m.pooling == "last_token"
    assert m.normalize is True
    assert m.hidden_size == 64
    assert m.max_length == 128
    assert m.matryoshka == (32, 64)
    assert m.prompts.query == "Instruct: {instruction}\nQuery:{text}"
    assert m.prompts.format_query("hi", "Find docs") == "Instruct: Find docs\nQuery:hi"
    assert m.end_of_text.token == "<|endoftext|>" and m.end_of_text.appended_by_tokenizer
    assert m.pad_token_id == m.end_of_text.token_id
    assert [t.name for t in m.inputs] == ["input_ids", "attention_mask"]
    assert {t.dtype for t in m.inputs} == {"int64"}
    assert [t.name for t in m.outputs] == ["sentence_embedding", "embedding_norm"]
    assert set(m.graphs) == {"fp32", "fp16"}
    assert m.export["opset"] == 20 and "torch" in m.export["versions"]
    assert len(m.source["content_sha256"]) == 64
    for name in ("model.fp32.onnx", "model.fp16.onnx", "tokenizer.json", "tokenizer_config.json"):
        assert name in m.files and (qwen3_artefact / name).is_file()
    # Round trip: the JSON on disk is exactly what the dataclass writes.
    data = json.loads((qwen3_artefact / "manifest.json").read_text())
    assert Manifest.from_dict(data) == m


def test_parity_report_in_manifest(qwen3_artefact: Path) -> None:
    m = load_manifest(qwen3_artefact)
    for graphs in (m.graphs, m.eager_graphs):
        fp32, fp16 = graphs["fp32"].parity, graphs["fp16"].parity
        assert fp32["passed"] and fp32["min_cosine"] >= 0.99999
        assert fp16["passed"] and fp16["min_cosine"] >= 0.999
        assert fp32["texts"] == 8
    # The fused graph takes no mask: exact with right padding only, so only that is gated.
    assert set(m.graphs["fp32"].parity["per_mode_min_cosine"]) == {"single", "batch_right"}
    assert set(m.eager_graphs["fp32"].parity["per_mode_min_cosine"]) == {"single", "batch_left", "batch_right"}


def test_onnx_graph_io(qwen3_artefact: Path) -> None:
    for precision in ("fp32", "fp16"):
        graph = onnx.load(str(qwen3_artefact / f"model.{precision}.onnx"), load_external_data=False)
        inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
        outputs = {o.name: o.type.tensor_type for o in graph.graph.output}
        assert set(inputs) == {"input_ids", "attention_mask"}
        for t in inputs.values():
            assert t.elem_type == onnx.TensorProto.INT64
            assert [d.dim_param for d in t.shape.dim] == ["batch", "sequence"]
        emb = outputs["sentence_embedding"]
        assert emb.elem_type == onnx.TensorProto.FLOAT
        assert emb.shape.dim[0].dim_param == "batch" and emb.shape.dim[1].dim_value == 64


@pytest.mark.parametrize("shape", [(1, 1), (5, 37), (16, 200)])
def test_unseen_shapes_match_pytorch(qwen3_dir: Path, qwen3_artefact: Path, shape: tuple[int, int]) -> None:
    """Axes are really dynamic: shapes never traced match PyTorch, rows padded to random lengths."""
    batch, seq = shape
    model = AutoModel.from_pretrained(qwen3_dir, attn_implementation="eager").eval()
    rng = np.random.default_rng(seq)
    ids = rng.integers(0, 800, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    session = ort.InferenceSession(str(qwen3_artefact / "model.fp32.onnx"))
    got = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (batch, 64)
    for i in range(batch):  # each row alone, unpadded, through the official pooling
        n = int(lengths[i])
        with torch.no_grad():
            ids_i, mask_i = torch.from_numpy(ids[i : i + 1, :n]), torch.ones(1, n, dtype=torch.int64)
            hidden = model(input_ids=ids_i, attention_mask=mask_i).last_hidden_state
            want = torch.nn.functional.normalize(reference_pool(hidden, mask_i, "last_token"), dim=-1)[0].numpy()
        assert float(got[i] @ want) >= 0.99999, (shape, i)


@pytest.mark.parametrize("name", ["mha-h32-l1", "gqa-h96-l3"])
def test_other_shapes_export_with_parity(qwen3_dirs: dict[str, Path], tmp_path: Path, name: str) -> None:
    m = export_model(str(qwen3_dirs[name]), tmp_path / name, ExportOptions(max_length=64), log=lambda _: None)
    assert m.graphs["fp32"].parity["min_cosine"] >= 0.99999
    assert m.graphs["fp16"].parity["min_cosine"] >= 0.999
    assert m.matryoshka == (32, m.hidden_size)


def test_hidden_states_output_is_optional(qwen3_dir: Path, tmp_path: Path) -> None:
    m = export_model(str(qwen3_dir), tmp_path / "h", ExportOptions(dtypes=("fp32",), max_length=32,
                                                                   with_hidden_states=True), log=lambda _: None)
    assert [t.name for t in m.outputs][-1] == "last_hidden_state"
    assert set(m.graphs) == {"fp32"}
    session = ort.InferenceSession(str(tmp_path / "h" / "model.fp32.onnx"))
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    emb, _, hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert hidden.shape == (1, 3, 64)
    np.testing.assert_allclose(emb[0], hidden[0, -1] / np.linalg.norm(hidden[0, -1]), atol=1e-6)


def test_reference_tokenizer_is_the_fixture_one(qwen3_dir: Path, qwen3_artefact: Path) -> None:
    """The artefact carries the tokenizer files byte for byte."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (qwen3_artefact / name).read_bytes() == (qwen3_dir / name).read_bytes()
    tok = AutoTokenizer.from_pretrained(qwen3_artefact)
    assert tok("x")["input_ids"][-1] == load_manifest(qwen3_artefact).end_of_text.token_id
