"""The FP16 graph's dtypes are the GPU precision plan: check the plan, not just the numbers."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from embedrt_export.graph import module_classes


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in infos}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def test_fp16_graph_precision_plan(qwen3_artefact: Path) -> None:
    """The full plan (the eager graph's; the fused graph's lean plan: tests/export/test_fused.py)."""
    model = onnx.load(str(qwen3_artefact / "model.fp16.eager.onnx"))
    types = _types(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(types[i] == TensorProto.FLOAT16 for n in matmuls for i in n.input)
    norms = [n for n in model.graph.node if any(c.endswith("RMSNorm") for c in module_classes(n))]
    pows = [n for n in norms if n.op_type in ("Pow", "ReduceMean")]
    # Pow + ReduceMean in 4 norms per layer (input, q, k, post-attention) x 2 layers, plus the final norm.
    assert len(pows) == 2 * (4 * 2 + 1)
    assert all(types[o] == TensorProto.FLOAT for n in pows for o in n.output)
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 2 and all(types[n.output[0]] == TensorProto.FLOAT for n in softmax)
    residual = [n for n in model.graph.node if n.op_type == "Add" and module_classes(n)[-1:] == ["Qwen3DecoderLayer"]]
    assert len(residual) == 4 and all(types[n.output[0]] == TensorProto.FLOAT for n in residual)
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {TensorProto.INT64}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}


@pytest.mark.parametrize("form", ["", ".eager"])
def test_casts_only_at_region_boundaries(qwen3_artefact: Path, form: str) -> None:
    """No tensor is cast to FP16 and straight back (the flaw of ONNX Runtime's converter)."""
    model = onnx.load(str(qwen3_artefact / f"model.fp16{form}.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Cast":
            source = producers.get(node.input[0])
            assert source is None or source.op_type != "Cast", node.name
    fp32 = onnx.load(str(qwen3_artefact / f"model.fp32{form}.onnx"))
    fp32_bytes = sum(len(t.raw_data) for t in fp32.graph.initializer)
    fp16_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    assert fp16_bytes < 0.6 * fp32_bytes
