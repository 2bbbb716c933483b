"""The stages after export for a reranker artefact: TensorRT-RTX builds its graphs ahead of time (a
cross-encoder's token_type_ids included) and the engine check compares scores. Quantizing a reranker:
test_quantize_rerank.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedrt.config import BackendConfig
from embedrt.manifest import Manifest, load_manifest
from embedrt_export.errors import ParityError
from embedrt_export.trt.verify import RERANK_ENGINE_TOLERANCE, check, compare_backend

FAMILIES = ["qwen3_reranker_artefact", "cross_encoder_artefact"]


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / src.name
    shutil.copytree(src, out)  # session fixtures are shared: engines and graphs go into a copy
    return out


class _Shifted:
    """A backend whose scores are off by ``shift``: stands in for an engine that computes something else."""

    def __init__(self, inner: Any, shift: float) -> None:
        self.inner, self.shift = inner, shift

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, batch: Any) -> dict[str, np.ndarray]:
        out = self.inner.run(batch)
        return {**out, "score": out["score"] + self.shift}


def _ort(artefact: Path, manifest: Manifest, precision: str) -> Any:
    from embedrt.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(artefact, manifest, BackendConfig(precision=precision, device="cpu"))


@pytest.mark.parametrize("fixture", FAMILIES)
def test_engine_check_compares_scores_alone_and_batched(fixture: str, request: pytest.FixtureRequest) -> None:
    """The GPU check of `embedrt build`, run here with ONNX Runtime's FP16 graph standing in for the engine."""
    artefact = request.getfixturevalue(fixture)
    manifest = load_manifest(artefact)
    report = compare_backend(artefact, manifest, "fp16", _ort(artefact, manifest, "fp16"), log=lambda _: None)
    assert report["passed"] and report["gated_on"] == "max_abs_score_diff"
    assert report["max_abs_score_diff"] <= RERANK_ENGINE_TOLERANCE["fp16"] == report["threshold"]
    assert set(report["per_mode_max_abs_score_diff"]) == {"single", "batched"}
    assert report["pairs"] == manifest.graphs["fp32"].parity["pairs"]  # the export's parity pairs
    # Gated against the closer of the FP32 and the FP16 graph: here the stand-in is the FP16 graph itself.
    by_reference = report["max_abs_score_diff_by_reference"]
    assert set(by_reference) == {"onnxruntime-fp32-cpu", "onnxruntime-fp16-cpu"}
    assert report["reference"] == "onnxruntime-fp16-cpu" and by_reference["onnxruntime-fp16-cpu"] < 1e-6
    assert 0 < by_reference["onnxruntime-fp32-cpu"] <= RERANK_ENGINE_TOLERANCE["fp16"]
    check(report)
    fp32_engine = compare_backend(artefact, manifest, "fp32", _ort(artefact, manifest, "fp32"), log=lambda _: None)
    assert list(fp32_engine["max_abs_score_diff_by_reference"]) == ["onnxruntime-fp32-cpu"]
    wrong = compare_backend(artefact, manifest, "fp16", _Shifted(_ort(artefact, manifest, "fp16"), 0.01),
                            log=lambda _: None)
    assert not wrong["passed"]
    with pytest.raises(ParityError, match=r"max_abs_score_diff 0\.01\d* > 0\.002 \(worst: pair"):
        check(wrong)


@pytest.mark.parametrize("fixture", ["qwen3_reranker_int8", "cross_encoder_int8"])
def test_an_int8_engine_is_checked_against_the_qdq_graph_it_is_built_from(fixture: str,
                                                                          request: pytest.FixtureRequest) -> None:
    """Not against "int8-cpu" (what precision int8 picks on a CPU), not only against FP32 (quantization moves
    scores by more than any engine tolerance): the stand-in engine is the Q/DQ graph itself."""
    from dataclasses import replace

    artefact = request.getfixturevalue(fixture)
    manifest = load_manifest(artefact)
    qdq_only = replace(manifest, graphs={k: g for k, g in manifest.graphs.items() if k != "int8-cpu"})
    report = compare_backend(artefact, manifest, "int8", _ort(artefact, qdq_only, "int8"), log=lambda _: None)
    by_reference = report["max_abs_score_diff_by_reference"]
    assert set(by_reference) == {"onnxruntime-fp32-cpu", "onnxruntime-int8-qdq-cpu"}
    assert report["reference"] == "onnxruntime-int8-qdq-cpu" and report["passed"]
    assert report["max_abs_score_diff"] <= RERANK_ENGINE_TOLERANCE["int8"] == report["threshold"]
    assert by_reference["onnxruntime-int8-qdq-cpu"] < by_reference["onnxruntime-fp32-cpu"]
    check(report)
    wrong = compare_backend(artefact, manifest, "int8", _Shifted(_ort(artefact, qdq_only, "int8"), 0.1),
                            log=lambda _: None)
    assert not wrong["passed"]


# -- TensorRT-RTX ahead of time (no GPU needed), as tests/export/test_trt_build.py does for embedders --------------


@pytest.mark.trt
@pytest.mark.parametrize("fixture", FAMILIES)
def test_aot_build_of_reranker_graphs(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings",
                              reason="TensorRT-RTX is not installed: pip install 'embedrt-export[tensorrt-rtx]'")
    from embedrt.engines import list_engines, read_plan
    from embedrt_export.trt import BuildOptions, build_engines, load_flavour, parse_network

    artefact = _copy(request.getfixturevalue(fixture), tmp_path)
    manifest = load_manifest(artefact)
    flavour = load_flavour("tensorrt-rtx")
    for graph in (*manifest.graphs.values(), *manifest.eager_graphs.values()):
        net = parse_network(flavour, artefact / graph.file)
        assert net.parser.num_errors == 0, graph.file
        assert net.inputs == manifest.input_names
        assert {net.network.get_output(i).name for i in range(net.network.num_outputs)} == {"score", "logit"}
    targets = ("89", "120")
    records = build_engines(artefact, BuildOptions(("fp32", "fp16"), targets, "tensorrt-rtx"), log=lambda _: None)
    assert {str(r.key) for r in records} == {f"tensorrt-rtx-{trt.__version__}-sm{t}-{p}"
                                             for p in ("fp32", "fp16") for t in targets}
    for record in list_engines(artefact):
        assert record.parity is None and "ahead of time" in record.build["parity_skipped"]
        graph = manifest.graph(record.key.precision)
        assert (record.onnx_file, record.onnx_sha256) == (graph.file, graph.sha256)
        assert len(read_plan(artefact, manifest, record)) == record.plan_bytes > 100_000
