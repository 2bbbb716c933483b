"""The CPU INT8 graph (``int8-cpu``): u8s8 integer GEMMs with per-token scales, gated like the Q/DQ graph.

The quantized artefacts (``qwen3_int8``, ``minilm_int8``) are the session fixtures of tests/export/conftest.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from quantize_helpers import LINEAR_PER_LAYER, QUICK, _copy, _load, _snapshot

from embedrt.cli import main
from embedrt.manifest import load_manifest
from embedrt_export import QuantizeOptions, quantize_artefact
from embedrt_export.errors import QuantizationError
from embedrt_export.export.source import file_sha256
from embedrt_export.quantize.cpu_int8 import integer_kernels, quantize_per_token


@pytest.fixture(params=["qwen3", "minilm"])
def quantized(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"{request.param}_int8")


def test_cpu_graph_passes_gate_with_integer_kernels(quantized: tuple[str, Path]) -> None:
    """Every planned linear layer is a u8s8 integer GEMM (what MLAS runs fast), gated and recorded."""
    family, artefact = quantized
    m = load_manifest(artefact)
    cpu = m.graphs["int8-cpu"]
    assert cpu.parity["passed"] and cpu.parity["mean_cosine"] >= 0.99 and cpu.parity["gate_mean_cosine"] == 0.99
    assert cpu.parity["retrieval_agreement_at_10"] >= 0.85
    q = cpu.quantization
    assert q["target"] == "onnxruntime-cpu" and q["weight_bits"] == 7 and q["saturation_free_on_avx2"]
    assert m.graphs["int8"].quantization["target"] == "tensorrt"  # the manifest says which is which
    layers = {"qwen3": 2, "minilm": 6}[family]
    # MiniLM's FFN stays float in the Q/DQ graph; with per-token scales the CPU graph quantizes all of it.
    assert "auto_exclude" not in q
    assert q["quantized_nodes"] == layers * LINEAR_PER_LAYER["bert" if family == "minilm" else family]
    model = _load(artefact, "int8-cpu")
    ops = [n.op_type for n in model.graph.node]
    # Norm-fed groups (q/k/v, the FFN input) were each measured with one scale per tensor and kept
    # only where that cost at most the tolerance: the record says which, the graph agrees.
    granularity = q["per_tensor"]
    assert granularity["tolerance"] == 0.0005 and len(granularity["groups"]) == 2
    base = granularity["per_token_mean_cosine"]
    assert cpu.parity["mean_cosine"] >= base - 0.0005
    for group in granularity["groups"]:
        assert group["kept"] == (group["mean_cosine"] >= base - 0.0005)
    per_tensor = len(granularity["layers"])
    assert per_tensor == sum(g["nodes"] for g in granularity["groups"] if g["kept"])
    assert ops.count("DynamicQuantizeMatMul") == per_tensor == q["integer_ops"].get("DynamicQuantizeMatMul", 0)
    assert ops.count("MatMulIntegerToFloat") == q["quantized_nodes"] - per_tensor
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
            weight = inits[node.input[1]]
            assert weight.data_type == TensorProto.INT8 and np.abs(numpy_helper.to_array(weight)).max() <= 63
            want = "QuantizeLinear" if node.op_type == "MatMulIntegerToFloat" else "LayerNormalization"
            if family == "qwen3":
                want = {"MatMulIntegerToFloat": "QuantizeLinear", "DynamicQuantizeMatMul": "RMSNormalization"}[
                    node.op_type]
            assert producers[node.input[0]].op_type == want
    float_weights = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert not float_weights, f"linear layers left in float: {float_weights[:3]}"
    assert cpu.sha256 == m.files[cpu.file] == file_sha256(artefact / cpu.file)
    # What ONNX Runtime runs after its own graph optimisations: still the integer kernels.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(artefact.parent / f"{artefact.name}-cpu.opt.onnx")
    ort.InferenceSession(str(artefact / cpu.file), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    assert optimized.count("MatMulIntegerToFloat") + optimized.count("DynamicQuantizeMatMul") == q["quantized_nodes"]


def test_int8_on_cpu_picks_cpu_graph(minilm_int8: Path) -> None:
    from embedrt.backends.onnxruntime import choose_precision

    m = load_manifest(minilm_int8)
    assert choose_precision(m, "int8", "cpu") == "int8-cpu"
    assert choose_precision(m, "int8", "cuda") == "int8"  # the GPU keeps the Q/DQ graph
    assert choose_precision(m, "int8-cpu", "cpu") == "int8-cpu" and choose_precision(m, "auto", "cpu") == "fp32"
    without = dataclasses.replace(m, graphs={k: g for k, g in m.graphs.items() if k != "int8-cpu"})
    assert choose_precision(without, "int8", "cpu") == "int8"  # older artefacts: the Q/DQ graph, as before


def test_target_cpu_replaces_only_the_cpu_graph(qwen3_int8: Path, tmp_path: Path) -> None:
    out = _copy(qwen3_int8, tmp_path / "a")
    before = _snapshot(out)
    flags = ["--target", "cpu", "--cpu-weight-bits", "8", "--per-tensor-tolerance", "-1"]
    assert main(["quantize", str(out), *flags]) == 0
    m = load_manifest(out)
    q = m.graphs["int8-cpu"].quantization
    assert q["weight_bits"] == 8 and not q["saturation_free_on_avx2"]
    # A negative tolerance: every layer per token, no per-tensor search.
    assert q["per_tensor"] == {"tolerance": None, "groups": [], "layers": []}
    assert "DynamicQuantizeMatMul" not in q["integer_ops"]
    int8 = m.graphs["int8"]
    assert int8 == load_manifest(qwen3_int8).graphs["int8"]
    after = _snapshot(out)
    assert all(after[name] == before[name] for name in (int8.file, *int8.external_data))
    assert not list(out.glob(".quantize-*"))


def test_cpu_graph_gate_failure_changes_nothing(qwen3_int8: Path, tmp_path: Path) -> None:
    # Below 1 but out of reach with one group float: the CPU graph's own search runs, then gives up.
    out = _copy(qwen3_int8, tmp_path / "a")
    before = _snapshot(out)
    logs: list[str] = []
    with pytest.raises(QuantizationError) as info:
        quantize_artefact(out, QuantizeOptions(gate=0.9999999, max_auto_exclusions=1, qdq_graph=False, **QUICK),
                          log=logs.append)
    message = str(info.value)
    assert message.startswith("int8-cpu graph misses the quality gate") and "the artefact is unchanged" in message
    assert "Automatic exclusion gave up after keeping 1 group(s) float" in message
    assert any("int8-cpu sensitivity: only model.layers." in line for line in logs)
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def _two_linear_layers() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)
    w1[:, 3] = 0.0  # an all-zero column must not divide by zero
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="a"),
             helper.make_node("MatMul", ["x", "w2"], ["y2"], name="b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 16])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", k])
                               for n, k in (("y1", 8), ("y2", 4))],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), w1, w2


@pytest.mark.parametrize("bits", [7, 8])
def test_per_token_quantization_matches_reference(bits: int) -> None:
    """The rewrite against numpy: per-row scales, zero point 128, per-column weights, a shared input quantized once."""
    model, w1, w2 = _two_linear_layers()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    x[0, 1] *= 40.0  # an outlier token: per-token scales leave the other tokens their full range
    x[1, 2] = 0.0  # an all-zero token
    result = quantize_per_token(model, ["a", "b"], weight_bits=bits)
    assert result.quantized == ("a", "b") and not result.skipped and result.activations == 1
    assert integer_kernels(model) == {"QuantizeLinear": 1, "MatMulIntegerToFloat": 2}
    assert not {"w1", "w2"} & {i.name for i in model.graph.initializer}  # the float weights are gone
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    rows = x.reshape(-1, 16)
    scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127
    q = np.clip(np.rint(rows / scale), -127, 127)
    qmax = 2 ** (bits - 1) - 1
    for w, y in zip((w1, w2), got, strict=True):
        peak = np.abs(w).max(axis=0)
        wscale = np.where(peak > 0, peak / qmax, 1.0)
        wq = np.clip(np.rint(w / wscale), -qmax, qmax)
        want = ((q @ wq) * scale * wscale).reshape(2, 3, -1)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
        exact = x @ w
        assert np.max(np.abs(y - exact)) < 0.05 * np.max(np.abs(exact))
        assert np.all(y[1, 2] == 0.0)


def test_per_token_skips_what_it_cannot_quantize() -> None:
    model, _, _ = _two_linear_layers()
    model.graph.node[1].input[1] = "x"  # activation x activation: not a weight
    result = quantize_per_token(model, ["a", "b"])
    assert result.quantized == ("a",) and "b" in result.skipped
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_per_token(model, ["a"], weight_bits=4)


def _norm_fed_block() -> onnx.ModelProto:
    """LayerNorm -> q, k (with a bias Add), v; and an FFN-like MatMul reading a GELU, not a norm."""
    rng = np.random.default_rng(2)
    weights = {n: rng.normal(size=(16, 8)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
              numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
              numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bk")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["h", "wk"], ["k0"], name="k"),
             helper.make_node("Add", ["bk", "k0"], ["k"], name="k_bias"),
             helper.make_node("MatMul", ["h", "wv"], ["v"], name="v"),
             helper.make_node("Gelu", ["x"], ["g"], name="gelu"),
             helper.make_node("MatMul", ["g", "wo"], ["o"], name="o")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 8]) for n in ("q", "k", "v", "o")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_per_tensor_groups_and_fused_bias() -> None:
    """Norm-fed layers reading one tensor form one group; a per-tensor layer folds its bias Add in."""
    from embedrt_export.quantize.cpu_int8 import norm_fed_groups

    model = _norm_fed_block()
    roles = {"q": "l.*.attn.q", "k": "l.*.attn.k", "v": "l.*.attn.v", "o": "l.*.mlp.o"}
    groups = norm_fed_groups(model, roles)
    assert groups == {"attn.k + attn.q + attn.v": ("k", "q", "v")}  # o reads a GELU: per token only
    x = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    exact = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    result = quantize_per_token(model, ["q", "k", "v", "o"], per_tensor=groups["attn.k + attn.q + attn.v"])
    assert set(result.quantized) == {"q", "k", "v", "o"}
    assert integer_kernels(model) == {"DynamicQuantizeMatMul": 3, "QuantizeLinear": 1, "MatMulIntegerToFloat": 1}
    assert "k_bias" not in {n.name for n in model.graph.node}  # the bias rides in the integer GEMM
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for want, y in zip(exact, got, strict=True):
        assert y.shape == want.shape
        assert np.max(np.abs(y - want)) < 0.05 * np.max(np.abs(want))
