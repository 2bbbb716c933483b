"""The fused opset-23 graph: structure, op counts, parity, shared weights, the FP16 plan's fallback."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embedrt.manifest import load_manifest
from embedrt_export import ExportOptions, export_model
from embedrt_export.errors import ExportError
from embedrt_export.export import fused

EXPECTED_2_LAYERS = {"Attention": 2, "RMSNormalization": 9, "RotaryEmbedding": 4}


def _nodes(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path), load_external_data=False).graph.node)


def test_manifest_records_fused_graphs_and_eager_twins(qwen3_artefact: Path) -> None:
    m = load_manifest(qwen3_artefact)
    assert m.export["attention"] == ["fused", "eager"] and m.export["fused_opset"] == 23
    for precision in ("fp32", "fp16"):
        graph, twin = m.graphs[precision], m.eager_graphs[precision]
        assert graph.attention == "fused" and graph.padding_side == "right"
        assert graph.ops == EXPECTED_2_LAYERS
        # No mask in the fused graph: exact for right padding only, so only that is gated.
        assert set(graph.parity["per_mode_min_cosine"]) == {"single", "batch_right"}
        assert twin.attention == "eager" and twin.padding_side is None
        assert set(twin.parity["per_mode_min_cosine"]) == {"single", "batch_left", "batch_right"}
        assert graph.parity["passed"] and twin.parity["passed"]
        assert m.graph(precision, "eager") == twin and m.graph(precision) == graph
    assert m.graphs["fp32"].parity["min_cosine"] >= 0.99999
    assert m.graphs["fp16"].parity["min_cosine"] >= 0.999
    assert m.graphs["fp16"].parity["fp32_islands"] == "lean"


def test_fused_graph_structure(qwen3_artefact: Path) -> None:
    nodes = _nodes(qwen3_artefact / "model.fp32.onnx")
    producers = {out: n for n in nodes for out in n.output}
    counts = Counter(n.op_type for n in nodes)
    assert {op: counts[op] for op in EXPECTED_2_LAYERS} == EXPECTED_2_LAYERS
    assert counts["Softmax"] == 0
    for node in (n for n in nodes if n.op_type == "Attention"):
        assert len(node.input) == 3, "a causal fused graph takes no mask"
        assert {a.name: a.i for a in node.attribute}["is_causal"] == 1
        for kv in node.input[1:3]:  # K / V come straight from rotary / projection, not repeated
            assert producers[kv].op_type in ("RotaryEmbedding", "Transpose")
    for node in (n for n in nodes if n.op_type == "RotaryEmbedding"):
        assert producers[node.input[1]].op_type == "Expand" and producers[node.input[2]].op_type == "Expand"
    # The rotary Cos / Sin are computed once, not once per layer.
    assert counts["Cos"] == 1 and counts["Sin"] == 1
    eager = _nodes(qwen3_artefact / "model.fp32.eager.onnx")
    assert len(nodes) < 0.6 * len(eager)


def test_fused_fp16_plan_is_lean(qwen3_artefact: Path) -> None:
    model = onnx.load(str(qwen3_artefact / "model.fp16.onnx"), load_external_data=False)
    producers = {out: n for n in model.graph.node for out in n.output}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type in ("RMSNormalization", "Attention", "RotaryEmbedding", "MatMul"):
            assert types.get(node.output[0]) == onnx.TensorProto.FLOAT16, node.name
        if node.op_type in ("Cos", "Sin"):  # rotary angles stay FP32: FP16 cannot hold 32K radians
            assert not node.input[0].endswith("__fp16"), node.name
            assert not node.output[0].endswith("__fp16") and types.get(node.output[0]) != onnx.TensorProto.FLOAT16
    for node in model.graph.node:  # no FP32 -> FP16 -> FP32 round trips
        if node.op_type == "Cast" and node.input[0] in producers:
            assert producers[node.input[0]].op_type != "Cast"


def test_eager_twin_shares_the_weights(qwen3_artefact: Path) -> None:
    m = load_manifest(qwen3_artefact)
    for precision in ("fp32", "fp16"):
        main, twin = m.graphs[precision], m.eager_graphs[precision]
        assert twin.external_data[0] == main.external_data[0], "the twin reads the main graph's weight file"
        assert not (qwen3_artefact / f"{twin.file}.data").exists() or twin.external_data[-1] == f"{twin.file}.data"
        for name in (*main.external_data, *twin.external_data):
            assert name in m.files
    data = sum((qwen3_artefact / name).stat().st_size for name in m.files if name.endswith(".data"))
    weights = sum(int(np.prod(t.dims)) * 4 for t in onnx.load(
        str(qwen3_artefact / "model.fp32.onnx"), load_external_data=False).graph.initializer if np.prod(t.dims) > 256)
    assert data < 1.7 * weights, "one FP32 and one FP16 copy of the weights, not four"


def test_fused_graph_needs_right_padding(qwen3_artefact: Path, qwen3_dir: Path) -> None:
    """Why the manifest records the padding side: without a mask, left pads are attended."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen3_dir / "tokenizer.json"))
    short, long = tok.encode("a cat").ids, tok.encode("The quick brown fox jumps over the lazy dog").ids
    session = ort.InferenceSession(str(qwen3_artefact / "model.fp32.onnx"), providers=["CPUExecutionProvider"])

    def run(ids: list[int], pad_left: int, pad_right: int) -> np.ndarray:
        row = np.array([[0] * pad_left + ids + [0] * pad_right], dtype=np.int64)
        mask = np.array([[0] * pad_left + [1] * len(ids) + [0] * pad_right], dtype=np.int64)
        return session.run(["sentence_embedding"], {"input_ids": row, "attention_mask": mask})[0][0]

    alone = run(short, 0, 0)
    pad = len(long) - len(short)
    assert float(alone @ run(short, 0, pad)) > 0.99999
    assert float(alone @ run(short, pad, 0)) < 0.999


def test_broken_fusion_fails_loudly(qwen3_artefact: Path) -> None:
    model = onnx.load(str(qwen3_artefact / "model.fp32.onnx"), load_external_data=False)
    with pytest.raises(ExportError, match=r"Attention: 2 found, 3 expected.*--attention eager"):
        fused.check(model, {**EXPECTED_2_LAYERS, "Attention": 3}, causal=True)
    fused.check(model, EXPECTED_2_LAYERS, causal=True)  # the real graph passes its own check
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attention.input.append("some_mask")
    with pytest.raises(ExportError, match="still takes a mask"):
        fused.check(model, EXPECTED_2_LAYERS, causal=True)


def test_fp16_falls_back_to_full_islands_when_lean_misses_the_gate(
        qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedrt_export.export import exporter

    real = exporter._Gate.measure
    calls: list[str] = []

    def measure(self, path, precision, sides):  # the first FP16 try (the lean plan) misses the gate
        report = real(self, path, precision, sides)
        calls.append(f"{path.name}")
        if precision == "fp16" and calls.count(path.name) == 1:
            report = {**report, "passed": False, "min_cosine": 0.5}
        return report

    monkeypatch.setattr(exporter._Gate, "measure", measure)
    m = export_model(str(qwen3_dir), tmp_path / "a", ExportOptions(max_length=32, attention="fused"),
                     log=lambda _: None)
    assert calls == ["model.fp32.onnx", "model.fp16.onnx", "model.fp16.onnx"]
    assert m.graphs["fp16"].parity["fp32_islands"] == "full" and m.graphs["fp16"].parity["passed"]
    assert m.eager_graphs == {}
    types = {n.op_type for n in _nodes(tmp_path / "a" / "model.fp16.onnx")}
    assert "RMSNormalization" in types


def test_attention_option(qwen3_dir: Path, minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = export_model(str(qwen3_dir), tmp_path / "e", ExportOptions(dtypes=("fp32",), max_length=32,
                                                                   attention="eager"), log=lambda _: None)
    assert m.graphs["fp32"].attention == "eager" and m.graphs["fp32"].file == "model.fp32.onnx"
    assert m.eager_graphs == {} and "Attention" not in {n.op_type for n in _nodes(tmp_path / "e" / "model.fp32.onnx")}
    # A family whose fused op counts are not known yet (bert's are: see test_export_minilm) is refused.
    from embedrt_export.export import spec

    defaults = spec._FAMILY_DEFAULTS["bert"]
    monkeypatch.setitem(spec._FAMILY_DEFAULTS, "bert", dataclasses.replace(defaults, fused_per_layer=None))
    with pytest.raises(ExportError, match="not available for bert"):
        export_model(str(minilm_dir), tmp_path / "b", ExportOptions(attention="fused"), log=lambda _: None)
    with pytest.raises(ExportError, match="--attention must be one of"):
        export_model(str(qwen3_dir), tmp_path / "x", ExportOptions(attention="flash"), log=lambda _: None)
    assert not (tmp_path / "b").exists() and not (tmp_path / "x").exists()


def test_fp16_only_export_keeps_no_fp32_files(qwen3_dir: Path, tmp_path: Path) -> None:
    m = export_model(str(qwen3_dir), tmp_path / "h", ExportOptions(dtypes=("fp16",), max_length=32),
                     log=lambda _: None)
    assert set(m.graphs) == {"fp16"} and set(m.eager_graphs) == {"fp16"}
    on_disk = {p.name for p in (tmp_path / "h").iterdir()}
    assert not any(name.startswith("model.fp32") for name in on_disk)
    assert {n for n in m.files if n.startswith("model.")} == {n for n in on_disk if n.startswith("model.")}
