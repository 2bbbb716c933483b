"""TensorRT-RTX ahead-of-time builds on CPU: the proof, in CI, that our graphs build for real GPUs.

Tiny Qwen3 and MiniLM artefacts, FP32 / FP16 / INT8, for two compute capabilities each. Running
the plans needs a GPU (tests/gpu); here we prove parsing, building, the store and the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedrt.cli import main
from embedrt.engines import (
    CONTEXTS,
    EngineKey,
    Wanted,
    engine_dir,
    list_engines,
    read_plan,
    select_engine,
)
from embedrt.errors import ArtefactError, EngineMismatchError
from embedrt.manifest import load_manifest

trt = pytest.importorskip("tensorrt_rtx_bindings",
                          reason="TensorRT-RTX is not installed: pip install 'embedrt-export[tensorrt-rtx]'")

from embedrt_export.errors import ExportError  # noqa: E402
from embedrt_export.trt import (  # noqa: E402
    BuildOptions,
    build_engines,
    current_gpu,
    default_profiles,
    load_flavour,
    parse_network,
    parse_profiles,
    parse_targets,
)
from embedrt_export.trt.profiles import with_copies  # noqa: E402

pytestmark = pytest.mark.trt
TARGETS = ("89", "120")
RECORD_FIELDS = {"key", "onnx_file", "onnx_sha256", "plan_sha256", "plan_bytes", "profiles", "build", "parity",
                 "schema_version"}
BUILD_FIELDS = {"flavour_version", "target", "seconds", "created", "profiles_spec", "contexts", "batching", "layers",
                "timing_cache", "built_on_gpu", "tf32"}


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / src.name
    shutil.copytree(src, out)  # session fixtures are shared: engines go into a copy
    return out


def _add_int8_graph(artefact: Path) -> None:
    """The artefact's "int8" graph, made as a user would: ``embedrt quantize`` (symmetric Q/DQ)."""
    from embedrt_export import QuantizeOptions, quantize_artefact

    quantize_artefact(artefact, QuantizeOptions(cpu_variant=False, limit_calibration=16, limit_heldout=24,
                                                show_progress=False), log=lambda _: None)
    assert "int8" in load_manifest(artefact).graphs


def _check_store(artefact: Path, precisions: tuple[str, ...], targets: tuple[str, ...]) -> None:
    manifest = load_manifest(artefact)
    records = {str(r.key): r for r in list_engines(artefact)}
    version = trt.__version__
    assert set(records) == {f"tensorrt-rtx-{version}-sm{t}-{p}" for p in precisions for t in targets}
    for record in records.values():
        raw = json.loads((engine_dir(artefact, record.key) / "engine.json").read_text())
        assert set(raw) == RECORD_FIELDS and BUILD_FIELDS <= set(raw["build"])
        assert raw["key"]["name"] == str(record.key)
        graph = manifest.graph(record.key.precision)
        assert (record.onnx_file, record.onnx_sha256) == (graph.file, graph.sha256)
        assert record.profiles == with_copies(default_profiles(manifest.max_length), CONTEXTS)
        assert record.parity is None and "ahead of time" in record.build["parity_skipped"]
        assert record.build["timing_cache"] == "not supported by tensorrt-rtx"
        assert record.build["tf32"] is (record.key.precision != "fp32")  # FP32 engines are FP32
        assert len(read_plan(artefact, manifest, record)) == record.plan_bytes > 100_000


@pytest.mark.parametrize("fixture", ["qwen3_artefact", "minilm_artefact"])
def test_aot_build_fp32_fp16_for_two_gpus(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    artefact = _copy(request.getfixturevalue(fixture), tmp_path)
    lines: list[str] = []
    records = build_engines(artefact, BuildOptions(("fp32", "fp16"), TARGETS, "tensorrt-rtx"), log=lines.append)
    assert len(records) == 4
    _check_store(artefact, ("fp32", "fp16"), TARGETS)
    assert any("Building engine" in line for line in lines)  # the progress monitor reported phases
    assert not [p for p in (artefact / "engines").iterdir() if p.name.startswith(".")]


def test_tf32_is_cleared_for_fp32_engines_only() -> None:
    from embedrt.backends.trt_loader import make_logger
    from embedrt_export.trt.build import configure_precision

    builder = trt.Builder(make_logger(trt))
    for precision, on in (("fp32", False), ("fp16", True), ("int8", True)):
        config = builder.create_builder_config()
        assert config.get_flag(trt.BuilderFlag.TF32)  # on by default, as in datacenter TensorRT
        assert configure_precision(trt, config, precision) is on
        assert config.get_flag(trt.BuilderFlag.TF32) is on


@pytest.mark.parametrize("fixture", ["qwen3_artefact", "minilm_artefact"])
def test_every_graph_parses_with_no_unsupported_node(fixture: str, request: pytest.FixtureRequest) -> None:
    artefact = request.getfixturevalue(fixture)
    manifest = load_manifest(artefact)
    flavour = load_flavour("tensorrt-rtx")
    for precision, graph in manifest.graphs.items():
        net = parse_network(flavour, artefact / graph.file)
        assert net.parser.num_errors == 0, precision
        names = {net.network.get_output(i).name for i in range(net.network.num_outputs)}
        assert {"sentence_embedding", "embedding_norm"} <= names


def test_int8_qdq_graph_builds(qwen3_artefact: Path, tmp_path: Path) -> None:
    artefact = _copy(qwen3_artefact, tmp_path)
    _add_int8_graph(artefact)
    records = build_engines(artefact, BuildOptions(("int8",), TARGETS, "tensorrt-rtx"), log=lambda _: None)
    _check_store(artefact, ("int8",), TARGETS)
    assert {r.build["int8_float"] for r in records} == {"fp16"}  # INT8 + FP16 by default
    assert not list(artefact.glob(".int8-fp16-*"))  # the converted copy is gone once built
    # The graph as quantized (FP32 around the INT8 GEMMs) still builds when asked for.
    as_is = build_engines(artefact, BuildOptions(("int8",), TARGETS[:1], "tensorrt-rtx", int8_float="fp32"),
                          log=lambda _: None)
    assert as_is[0].build["int8_float"] == "fp32" and as_is[0].plan_sha256 != records[0].plan_sha256
    with pytest.raises(ExportError, match="choose fp16 or fp32"):
        build_engines(artefact, BuildOptions(("int8",), TARGETS, "tensorrt-rtx", int8_float="bf16"))


def test_asymmetric_qdq_is_refused_naming_the_node(qwen3_artefact: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    feeds = [{"input_ids": np.arange(16, dtype=np.int64)[None], "attention_mask": np.ones((1, 16), np.int64)}]

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return feeds.pop() if feeds else None

    out = tmp_path / "asym.onnx"
    quantize_static(str(qwen3_artefact / "model.fp32.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], extra_options={"ActivationSymmetric": False})
    with pytest.raises(ExportError, match=r"cannot parse asym.onnx:\n  node \S+ \(QuantizeLinear\).*zero point"):
        parse_network(load_flavour("tensorrt-rtx"), out)


def test_refusals_name_what_to_do(qwen3_artefact: Path, tmp_path: Path) -> None:
    artefact = _copy(qwen3_artefact, tmp_path)
    with pytest.raises(ArtefactError, match="embedrt quantize"):
        build_engines(artefact, BuildOptions(("int8",), TARGETS, "tensorrt-rtx"), log=lambda _: None)
    with pytest.raises(ExportError, match=r"Hopper SM90 is not among them.*--flavour tensorrt"):
        build_engines(artefact, BuildOptions(("fp16",), ("90",), "tensorrt-rtx"), log=lambda _: None)
    # CURRENT on an H100: measured to build a plan that cannot load there, so refused before building.
    with pytest.raises(ExportError, match=r"cannot target sm90.*--flavour tensorrt"):
        load_flavour("tensorrt-rtx").resolve_targets(None, "90")
    assert load_flavour("tensorrt-rtx").resolve_targets(None, "89") == ("89",)
    if importlib.util.find_spec("tensorrt") is None:  # datacenter TensorRT: absent in CI
        with pytest.raises(ExportError, match="--flavour tensorrt is not installed"):
            build_engines(artefact, BuildOptions(("fp16",), None, "tensorrt"), log=lambda _: None)
    if current_gpu() is None:
        with pytest.raises(ExportError, match="--target CURRENT means nothing here"):
            build_engines(artefact, BuildOptions(("fp16",), None, "tensorrt-rtx"), log=lambda _: None)
    (artefact / "model.fp16.onnx").write_bytes(b"changed")
    with pytest.raises(ExportError, match="differs from the manifest"):
        build_engines(artefact, BuildOptions(("fp16",), TARGETS, "tensorrt-rtx"), log=lambda _: None)
    assert not (artefact / "engines").exists()  # nothing half-built was left


def test_profiles_from_buckets_and_spec() -> None:
    assert [p.describe() for p in default_profiles(128)] == ["1x1:64x128:64x128"]
    assert [p.describe() for p in default_profiles(8192)] == [
        "1x1:64x128:64x128", "1x129:32x512:64x512", "1x513:8x2048:16x2048", "1x2049:2x8192:4x8192"]
    for profile in default_profiles(32768):
        assert profile.max[0] * profile.max[1] <= 2 * 16384  # activation memory stays near the token budget
    assert [p.describe() for p in parse_profiles("64,128", 128)] == ["1x1:64x64:64x64", "1x65:64x128:64x128"]
    assert [p.describe() for p in parse_profiles("64", 128)] == ["1x1:64x64:64x64", "1x65:1x128:64x128"]
    assert [p.describe() for p in parse_profiles("1x1:8x64:32x128", 128)] == ["1x1:8x64:32x128"]
    for bad, message in (("1x1:8x64:32x256", "past the model's max_length"), ("64,1x1:2x2:3x3", "mixes"),
                         ("1x1:8x64", "three shapes"), ("1x1:8x64:4x128", "min <= opt <= max"), ("", "empty"),
                         ("ax1:1x1:1x1", "not a shape")):
        with pytest.raises(ExportError, match=message):
            parse_profiles(bad, 128)
    assert parse_targets("CURRENT") is None and parse_targets(None) is None
    assert parse_targets("sm89, 8.6,sm120,sm89") == ("89", "86", "120")
    with pytest.raises(ExportError, match="not a compute capability"):
        parse_targets("ada")


def test_cli_builds_and_the_runtime_selects(qwen3_artefact: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    artefact = _copy(qwen3_artefact, tmp_path)
    rc = main(["build", str(artefact), "--precision", "fp16", "--target", "sm89,sm120", "--flavour", "tensorrt-rtx",
               "--profiles", "64,128", "--contexts", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("installed ") == 2
    manifest = load_manifest(artefact)
    version = trt.__version__
    record = select_engine(artefact, manifest, Wanted({"tensorrt-rtx": version}, "120"))
    assert record.key == EngineKey("tensorrt-rtx", version, "120", "fp16")
    assert [p.describe() for p in record.profiles] == ["1x1:64x64:64x64"] * 2 + ["1x65:64x128:64x128"] * 2
    with pytest.raises(EngineMismatchError, match=r"--precision fp16 --target sm86 --flavour tensorrt-rtx`"):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": version}, "86"))
    assert main(["build", str(artefact), "--precision", "int8", "--target", "sm89"]) == 2
    assert "embedrt quantize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", str(artefact), "--precision", "bf16"])


def test_fused_graph_builds_with_fused_attention(qwen3_artefact: Path, tmp_path: Path) -> None:
    """The default (fused) graph parses into TensorRT attention layers; FP16 gets its dedicated kernel,
    FP32 (no dedicated kernel) is built with the attention layers marked decomposable."""
    from embedrt_export.trt.build import attention_layers

    artefact = _copy(qwen3_artefact, tmp_path)
    manifest = load_manifest(artefact)
    flavour = load_flavour("tensorrt-rtx")
    assert len(attention_layers(flavour, parse_network(flavour, artefact / "model.fp16.onnx").network)) == 2
    for graph in manifest.eager_graphs.values():  # the eager twins parse too, with no attention layer
        net = parse_network(flavour, artefact / graph.file)
        assert net.parser.num_errors == 0 and attention_layers(flavour, net.network) == []
    records = {r.key.precision: r for r in build_engines(
        artefact, BuildOptions(("fp32", "fp16"), TARGETS[:1], "tensorrt-rtx"), log=lambda _: None)}
    assert records["fp16"].build["attention"] == "fused" and "attention_decomposed" not in records["fp16"].build
    assert records["fp32"].build["attention"] == "fused" and records["fp32"].build["attention_decomposed"] is True
    eager = build_engines(artefact, BuildOptions(("fp16",), TARGETS[:1], "tensorrt-rtx", attention="eager"),
                          log=lambda _: None)[0]
    assert eager.onnx_file == "model.fp16.eager.onnx" and eager.build["attention"] == "eager"
    assert len(read_plan(artefact, manifest, eager)) == eager.plan_bytes  # the twin's engine counts as current


def test_flavour_without_fused_ops_falls_back_to_eager(qwen3_artefact: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from embedrt_export.trt import build as build_module

    real = build_module.parse_network

    def old_parser(flavour, path):  # stands in for a TensorRT without opset-23 Attention
        if ".eager." not in path.name:
            raise ExportError(f"{flavour.name} cannot parse {path.name}:\n  node attn (Attention): no importer")
        return real(flavour, path)

    monkeypatch.setattr(build_module, "parse_network", old_parser)
    artefact = _copy(qwen3_artefact, tmp_path)
    lines: list[str] = []
    record = build_engines(artefact, BuildOptions(("fp16",), TARGETS[:1], "tensorrt-rtx"), log=lines.append)[0]
    assert record.onnx_file == "model.fp16.eager.onnx" and "no importer" in record.build["fallback"]
    assert any("building from its eager twin instead" in line for line in lines)
    with pytest.raises(ExportError, match="no importer"):
        build_engines(artefact, BuildOptions(("fp16",), TARGETS[:1], "tensorrt-rtx", attention="fused"),
                      log=lambda _: None)
