"""``embedrt quantize``: calibrated INT8 Q/DQ graphs behind a quality gate, on tiny Qwen3 and real MiniLM.

The quantized artefacts are session fixtures (tests/export/conftest.py, calibrated on few texts);
the CPU graph's own tests are in test_quantize_cpu.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from quantize_helpers import LINEAR_PER_LAYER, QUICK, _copy, _load, _snapshot

from embedrt.cli import main
from embedrt.manifest import load_manifest
from embedrt_export import QuantizeOptions, quantize_artefact
from embedrt_export.errors import QuantizationError
from embedrt_export.export.source import file_sha256
from embedrt_export.graph import module_classes
from embedrt_export.quantize.calibration import SHIPPED, load_records
from embedrt_export.quantize.quality import retrieval_agreement

# MiniLM's FFN layers carry token-wise activation outliers that static per-tensor INT8 cannot hold
# (0.972 mean cosine fully quantized): with default options the automatic exclusion search keeps them float.
MINILM_FFN_CLASSES = {"BertIntermediate", "BertOutput"}


@pytest.fixture(params=["qwen3", "minilm"])
def int8_artefact(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_int8")


def _dq_fed(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Node name -> indices of its inputs that come straight from a DequantizeLinear."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: [i for i, x in enumerate(n.input) if x in dq_out] for n in model.graph.node}


def test_int8_passes_gate_and_is_recorded(int8_artefact: Path) -> None:
    m = load_manifest(int8_artefact)
    graph = m.graphs["int8"]
    report = graph.parity
    assert report["passed"] and report["mean_cosine"] >= 0.99 and report["gate_mean_cosine"] == 0.99
    assert report["min_cosine"] > 0.9 and report["retrieval_agreement_at_10"] >= 0.8
    assert report["queries"] >= 10 and report["documents"] >= 10
    q = graph.quantization
    assert q["format"] == "QDQ" and q["symmetric"] and q["method"] == "max"
    assert q["quantizer"] == "onnxruntime.quantization.quantize_static" and q["quantizer_version"] == ort.__version__
    assert q["calibration"] == {"source": "shipped:calibration.jsonl", "texts": 40, "batch_size": 8}
    for name in (graph.file, *graph.external_data):
        assert m.files[name] == file_sha256(int8_artefact / name)
    assert graph.sha256 == m.files[graph.file]
    assert not list(int8_artefact.glob(".quantize-*")), "staging directory left behind"
    # The INT8 graph tracks FP32 on texts it never saw.
    texts = ["Instruct: Find docs\nQuery:what is int8?", "Le renard brun rapide.", "def f(x):\n    return x"]
    fp32 = ort.InferenceSession(str(int8_artefact / m.graph("fp32").file), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_artefact / graph.file), providers=["CPUExecutionProvider"])
    from embedrt_export.quantize.calibration import TextEncoder

    feed = TextEncoder(int8_artefact, m).encode(texts)
    a, b = (s.run(["sentence_embedding"], feed)[0] for s in (fp32, int8))
    assert np.all(np.sum(a * b, axis=1) > 0.97)


def test_zero_points_all_zero(int8_artefact: Path) -> None:
    model = _load(int8_artefact)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    for node in qdq:
        assert len(node.input) == 3, f"{node.name} has no explicit zero point"
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: zero point {zp}"


def test_every_linear_layer_quantized_except_excluded(qwen3_int8: Path, minilm_int8: Path) -> None:
    for artefact, family, layers, excluded_per_layer in ((qwen3_int8, "qwen3", 2, 0), (minilm_int8, "bert", 6, 2)):
        model = _load(artefact)
        inits = {i.name: i for i in model.graph.initializer}
        producer = {n.output[0]: n for n in model.graph.node}
        fed = _dq_fed(model)
        weight_int8 = [n.name for n in model.graph.node
                       if n.op_type == "MatMul" and 1 in fed[n.name]
                       and inits[producer[n.input[1]].input[0]].data_type == onnx.TensorProto.INT8]
        assert len(weight_int8) == layers * (LINEAR_PER_LAYER[family] - excluded_per_layer)
        # Quantized MatMuls take INT8 on both inputs (activation and weight) and give float out.
        assert all(fed[name] == [0, 1] for name in weight_int8)
        summary = load_manifest(artefact).graphs["int8"].quantization
        assert summary["quantized_nodes"] == len(weight_int8)


def test_excluded_ops_stay_float(int8_artefact: Path) -> None:
    model = _load(int8_artefact)
    fed = _dq_fed(model)
    float_ops = {"Gather", "Softmax", "LayerNormalization", "ReduceMean", "Pow", "Sqrt", "ReduceL2", "Div",
                 "ReduceSum", "GatherND", "ArgMax"}
    checked = 0
    for node in model.graph.node:
        classes = module_classes(node)
        in_norm = any(c.endswith(("RMSNorm", "LayerNorm")) for c in classes)
        tail = 0 < len(classes) <= 1
        if node.op_type in float_ops or in_norm or tail:
            assert not fed[node.name], f"{node.op_type} {node.name} ({classes}) reads a dequantized tensor"
            checked += 1
        if node.op_type == "MatMul" and 1 not in fed[node.name]:
            assert not fed[node.name], f"attention MatMul {node.name} was quantized"
    assert checked > 10
    # The token-embedding table is still float.
    emb = [n for n in model.graph.node if n.op_type == "Gather" and "Embedding" in module_classes(n)]
    inits = {i.name: i for i in model.graph.initializer}
    assert emb and all(inits[n.input[0]].data_type == onnx.TensorProto.FLOAT for n in emb)


def test_exclude_pattern_keeps_matches_float(qwen3_artefact: Path, tmp_path: Path) -> None:
    out = _copy(qwen3_artefact, tmp_path / "a")
    quantize_artefact(out, QuantizeOptions(exclude=("*.mlp.down_proj", "model.layers.1.self_attn.*"),
                                           cpu_variant=False, **QUICK), log=lambda _: None)
    q = load_manifest(out).graphs["int8"].quantization
    assert q["quantized_nodes"] == 14 - 2 - 4
    assert q["excluded_counts"]["--exclude *.mlp.down_proj"] == 2
    assert q["excluded_counts"]["--exclude model.layers.1.self_attn.*"] == 4
    model = _load(out)
    fed = _dq_fed(model)
    for name in q["excluded_nodes"]:
        assert not fed[name], f"{name} was excluded but reads dequantized input"
    assert "int8-cpu" not in load_manifest(out).graphs


def test_minilm_auto_excludes_ffn_and_records_why(minilm_int8: Path) -> None:
    q = load_manifest(minilm_int8).graphs["int8"].quantization
    auto = q["auto_exclude"]
    assert auto["passed"] and auto["granularity"] == "role" and auto["first_try"]["mean_cosine"] < 0.99
    assert {e["module_class"] for e in auto["excluded"]} == MINILM_FFN_CLASSES
    assert {e["group"].split(".*.", 1)[-1] for e in auto["excluded"]} == {"intermediate.dense", "output.dense"}
    last = auto["excluded"][-1]
    assert last["mean_cosine_after"] >= 0.99 and auto["excluded"][0]["mean_cosine_after"] < 0.99
    # The sensitivity numbers behind the choice: worst first, and the excluded groups lead.
    rows = auto["tries"][0]["sensitivity"]
    assert [r["mean_cosine_alone"] for r in rows] == sorted(r["mean_cosine_alone"] for r in rows)
    assert [r["group"] for r in rows[:2]] == [e["group"] for e in auto["excluded"]]
    assert sum(why.startswith("auto-exclude ") for why in q["excluded_nodes"].values()) == 12


def test_minilm_without_auto_exclude_fails_unchanged(minilm_artefact: Path, tmp_path: Path) -> None:
    out = _copy(minilm_artefact, tmp_path / "a")
    before = _snapshot(out)
    with pytest.raises(QuantizationError) as info:
        quantize_artefact(out, QuantizeOptions(auto_exclude=False, cpu_variant=False, **QUICK), log=lambda _: None)
    assert "Largest errors at:" in str(info.value) and "Automatic exclusion" not in str(info.value)
    assert _snapshot(out) == before


def test_qwen3_passes_first_time_without_auto_exclusion(qwen3_int8: Path) -> None:
    q = load_manifest(qwen3_int8).graphs["int8"].quantization
    assert "auto_exclude" not in q and q["quantized_nodes"] == 14
    assert not any(why.startswith("auto-exclude") for why in q["excluded_nodes"].values())


def test_auto_exclude_that_gives_up_changes_nothing(qwen3_int8: Path, tmp_path: Path) -> None:
    # Reachable in principle (below 1) but not with one group float: the search runs, then gives up.
    out = _copy(qwen3_int8, tmp_path / "a")
    before = _snapshot(out)
    logs: list[str] = []
    with pytest.raises(QuantizationError) as info:
        quantize_artefact(out, QuantizeOptions(gate=0.9999999, max_auto_exclusions=1, cpu_variant=False, **QUICK),
                          log=logs.append)
    message = str(info.value)
    assert "Automatic exclusion gave up after keeping 1 group(s) float" in message
    assert "Most harmful alone: model.layers." in message and "the artefact is unchanged" in message
    assert sum("auto-exclude (role)" in line for line in logs) == 1
    assert sum("auto-exclude (layer)" in line for line in logs) == 1
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_gate_failure_changes_nothing(qwen3_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Start from an artefact that already has INT8 graphs: a failed run must keep them as they are.
    out = _copy(qwen3_int8, tmp_path / "a")
    before = _snapshot(out)
    # A gate above 1 is out of reach of any exclusion, so the search is skipped: the plain failure.
    rc = main(["quantize", str(out), "--gate", "1.000001", "--batch-size", "16"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "misses the quality gate" in err and "the artefact is unchanged" in err
    assert "Largest errors at: model.layers." in err  # names the layers that hurt most
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_per_layer_sensitivity_names_worst_groups(qwen3_artefact: Path, tmp_path: Path) -> None:
    out = _copy(qwen3_artefact, tmp_path / "a")
    with pytest.raises(QuantizationError) as info:
        quantize_artefact(out, QuantizeOptions(gate=1.000001, per_layer_sensitivity=True, **QUICK),
                          log=lambda _: None)
    assert "Most harmful alone: model.layers.*." in str(info.value)
    assert "int8" not in load_manifest(out).graphs and not (out / "model.int8.onnx").exists()


def test_embedder_runs_int8(int8_artefact: Path) -> None:
    from embedrt import Embedder
    from embedrt.config import BackendConfig

    texts = ["first text", "zweiter Text", "第三", "def f(x):\n    return x"]
    with Embedder.load(int8_artefact, backend="onnxruntime", precision="fp32") as ref:
        want = ref.embed(texts)
    # "int8" on CPU loads the CPU graph (u8s8); "int8-cpu" asks for it by key.
    cpu = BackendConfig(device="cpu")
    for precision in ("int8", "int8-cpu"):
        with Embedder.load(int8_artefact, backend="onnxruntime", precision=precision, backend_config=cpu) as emb:
            assert emb.precision == "int8-cpu"
            got = emb.embed(texts)
        assert got.shape == want.shape
        assert np.all(np.sum(got * want, axis=1) > 0.97)


@pytest.mark.trt
def test_tensorrt_rtx_builds_int8_ahead_of_time(int8_artefact: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="pip install 'embedrt-export[tensorrt-rtx]'")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    graph = load_manifest(int8_artefact).graph("int8")
    path = int8_artefact / graph.file
    assert parser.parse_from_file(str(path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    kinds = {network.get_layer(i).type for i in range(network.num_layers)}
    assert trt.LayerType.QUANTIZE in kinds and trt.LayerType.DEQUANTIZE in kinds
    if graph.attention == "fused":
        # TensorRT has no FP32 kernel for a fused Attention op: such a graph builds as INT8 + FP16, the
        # way `embedrt build` makes it (test_int8_fp16_graph_for_tensorrt builds that one).
        pytest.skip("fused FP32 attention: built as INT8 + FP16 in test_int8_fp16_graph_for_tensorrt")
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1), (4, 64), (8, 128))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None and plan.nbytes > 0


def test_calibration_files(tmp_path: Path) -> None:
    txt = tmp_path / "c.txt"
    txt.write_text("one\n\ntwo\n", encoding="utf-8")
    assert [r.text for r in load_records(txt)] == ["one", "two"]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in ({"text": "q", "kind": "query", "instruction": "i"}, "plain",
                                                      {"text": "q2", "kind": "query", "task": "t"})) + "\n")
    assert [(r.text, r.kind, r.instruction) for r in load_records(jl)] == [
        ("q", "query", "i"), ("plain", "document", None), ("q2", "query", "t")]  # "task": the earlier name
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(QuantizationError, match=r"bad\.jsonl:1"):
        load_records(bad)
    with pytest.raises(QuantizationError, match="does not exist"):
        load_records(tmp_path / "missing.txt")


def test_shipped_sets_are_disjoint_and_varied() -> None:
    calib, held = load_records(SHIPPED["calibration"]), load_records(SHIPPED["heldout"])
    assert len(calib) >= 300 and len(held) >= 150
    assert not {r.text for r in calib} & {r.text for r in held}
    for records in (calib, held):
        assert sum(r.kind == "query" for r in records) >= 30
        lengths = [len(r.text) for r in records]
        assert min(lengths) < 40 and max(lengths) > 800
        assert any("def " in r.text for r in records) and any("的" in r.text for r in records)
    assert sum(p.stat().st_size for p in SHIPPED.values()) < 300_000


def test_custom_calibration_file_is_recorded(qwen3_artefact: Path, tmp_path: Path) -> None:
    out = _copy(qwen3_artefact, tmp_path / "a")
    calib = tmp_path / "mine.txt"
    calib.write_text("\n".join(f"sentence number {i} about embeddings" for i in range(12)), encoding="utf-8")
    rc = main(["quantize", str(out), "--calibration", str(calib), "--method", "entropy", "--no-cpu-variant"])
    assert rc == 0
    q = load_manifest(out).graphs["int8"].quantization
    assert q["calibration"]["source"] == str(calib) and q["calibration"]["texts"] == 12
    assert q["method"] == "entropy"


def test_smoothquant_keeps_fp32_function(qwen3_artefact: Path) -> None:
    from embedrt_export.quantize.calibration import TextEncoder
    from embedrt_export.quantize.plan import make_plan
    from embedrt_export.quantize.smoothquant import smooth

    m = load_manifest(qwen3_artefact)
    model = onnx.load(str(qwen3_artefact / m.graph("fp32").file))
    feed = TextEncoder(qwen3_artefact, m).encode(["a short text", "and a somewhat longer one, with commas"])
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    counts = smooth(model, make_plan(model).quantize, [feed], alpha=0.5)
    # q/k/v share the input RMSNorm and gate/up the post-attention one: folded into the norm weights.
    assert counts["folded"] == 4 and counts["inserted_mul"] == 4  # o_proj and down_proj get a Mul
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.min(np.sum(before * after, axis=1)) > 0.99999


def test_half_installed_export_stage_gives_install_hint(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The command is registered, but what it runs cannot be imported (as with torch missing).
    monkeypatch.setitem(sys.modules, "embedrt_export.quantize.pipeline", None)  # import now raises ImportError
    assert main(["quantize", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install embedrt-export" in err and "(missing: embedrt_export.quantize.pipeline)" in err


def test_retrieval_agreement() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 8)).astype(np.float32)
    queries, docs = list(range(5)), list(range(5, 40))
    assert retrieval_agreement(vecs, vecs, queries, docs) == 1.0
    noisy = vecs + rng.normal(scale=1.0, size=vecs.shape).astype(np.float32)
    assert retrieval_agreement(vecs, noisy, queries, docs) < 1.0


def _embed_with(graph: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    out = session.run(["sentence_embedding"], {i.name: feed[i.name] for i in session.get_inputs()})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_int8_fp16_graph_for_tensorrt(int8_artefact: Path, tmp_path: Path) -> None:
    """What `embedrt build --precision int8` parses: INT8 GEMMs, FP16 around them, FP32 islands kept,
    Q/DQ adjacent to their MatMuls (no Cast between), and the same quality against FP32."""
    from embedrt import Embedder
    from embedrt.batching import collate
    from embedrt_export.export import onnx_export
    from embedrt_export.fp16 import convert_qdq_to_fp16

    before = _load(int8_artefact)
    fed_before = {name: idx for name, idx in _dq_fed(before).items() if idx}
    model = convert_qdq_to_fp16(onnx.shape_inference.infer_shapes(before))
    assert {name: idx for name, idx in _dq_fed(model).items() if idx} == fed_before
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert not [c for c in casts if getattr(producers.get(c.input[0]), "op_type", "") == "DequantizeLinear"]
    assert not [c for c in casts if any(u.op_type == "QuantizeLinear" for u in consumers.get(c.output[0], []))]
    inits = {i.name: i for i in model.graph.initializer}
    gemm_dq = [producers[x] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") for x in n.input
               if getattr(producers.get(x), "op_type", "") == "DequantizeLinear"]
    assert gemm_dq and all(inits[dq.input[1]].data_type == onnx.TensorProto.FLOAT16 for dq in gemm_dq)
    embedding = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    assert embedding.data_type == onnx.TensorProto.FLOAT16  # the token table: half the bytes
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    norms = [n for n in model.graph.node if n.op_type in ("Pow", "ReduceMean", "LayerNormalization", "RMSNormalization")
             and any(c.endswith(("RMSNorm", "LayerNorm")) for c in module_classes(n))]
    assert norms and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in norms)  # norms stay FP32
    converted = tmp_path / "model.int8fp16.onnx"
    onnx_export.save(model, converted)
    if importlib.util.find_spec("tensorrt_rtx_bindings"):  # installed in CI: the graph must build too
        from embedrt.engines import EngineKey
        from embedrt_export.trt import default_profiles, load_flavour, parse_network
        from embedrt_export.trt.build import build_plan

        rtx = load_flavour("tensorrt-rtx")
        net = parse_network(rtx, converted)
        key = EngineKey(rtx.name, rtx.version, "89", "int8")
        assert len(build_plan(rtx, net, default_profiles(64), key, None, None, lambda _: None).plan) > 0

    manifest = load_manifest(int8_artefact)
    records = load_records(SHIPPED["heldout"])[:48]
    with Embedder.load(int8_artefact, "onnxruntime", precision="fp32") as embedder:
        items = embedder.prepare([r.text for r in records])
    batch = collate([e.ids for e in items], max(e.length for e in items), manifest.pad_token_id,
                    manifest.padding_side)
    feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    reference = _embed_with(int8_artefact / manifest.graph("fp32").file, feed)
    as_quantized = np.sum(_embed_with(int8_artefact / manifest.graph("int8").file, feed) * reference, axis=1)
    with_fp16 = np.sum(_embed_with(converted, feed) * reference, axis=1)
    print(f"vs FP32, mean cosine: INT8 {as_quantized.mean():.5f}, INT8 + FP16 {with_fp16.mean():.5f}")
    assert with_fp16.mean() >= 0.99 and with_fp16.mean() >= as_quantized.mean() - 0.003
