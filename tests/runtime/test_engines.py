"""The engine store (``embedrt.engines``): keys, selection among several engines, mismatch messages,
plan checks.

No TensorRT is needed here: the store is plain files, and every check happens before TensorRT sees
a plan's bytes. The TensorRT backend that reads the store is tested in test_tensorrt_backend.py and
the modules it is made of (test_trt_loader.py, test_trt_slots.py, test_pipeline.py).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from embedrt import Embedder
from embedrt.engines import (
    EngineKey,
    EngineRecord,
    ProfileShape,
    Wanted,
    engine_dir,
    list_engines,
    present_keys,
    read_plan,
    read_record,
    select_engine,
    sha256_bytes,
    write_engine,
)
from embedrt.errors import ArtefactError, EngineMismatchError
from embedrt.manifest import Manifest, load_manifest

PROFILES = (ProfileShape((1, 1), (64, 128), (64, 128)),)
RTX = "1.7.1.116"


@pytest.fixture
def artefact(qwen3_artefact: Path, tmp_path: Path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(qwen3_artefact, out)  # the session fixture is shared: never add engines to it
    return out


def _install(artefact: Path, manifest: Manifest, key: str, payload: bytes | None = None) -> EngineRecord:
    k = EngineKey.parse(key)
    plan = payload if payload is not None else f"plan for {key}".encode() * 50
    graph = manifest.graph(k.precision)
    record = EngineRecord(k, graph.file, graph.sha256, sha256_bytes(plan), len(plan), PROFILES, {"seconds": 0.1})
    write_engine(artefact, record, plan)
    return record


def test_key_round_trip_and_rejects_garbage() -> None:
    for text in ("tensorrt-rtx-1.7.1.116-sm89-fp16", "tensorrt-10.13.0.35-sm90-int8", "tensorrt-11.0.0-sm120-fp32"):
        assert str(EngineKey.parse(text)) == text
    assert EngineKey.parse("tensorrt-rtx-1.7.1.116-sm120-fp16").flavour == "tensorrt-rtx"
    for bad in ("tensorrt-rtx-sm89-fp16", "onnx-1.0-sm89-fp16", "tensorrt-10.0-sm89-bf16", "tensorrt-10.0-89-fp16"):
        with pytest.raises(ArtefactError, match="not an engine key"):
            EngineKey.parse(bad)


def test_selection_among_several_engines(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    for key in (f"tensorrt-rtx-{RTX}-sm89-fp16", f"tensorrt-rtx-{RTX}-sm89-fp32", f"tensorrt-rtx-{RTX}-sm120-fp16",
                "tensorrt-rtx-1.6.0.1-sm86-fp16", "tensorrt-10.13.0.35-sm89-fp16", f"tensorrt-rtx-{RTX}-sm86-fp32"):
        _install(artefact, manifest, key)
    assert len(list_engines(artefact)) == 6
    rtx = {"tensorrt-rtx": RTX}

    def pick(flavours: dict[str, str], sm: str, precision: str = "auto") -> str:
        return str(select_engine(artefact, manifest, Wanted(flavours, sm, precision)).key)

    assert pick(rtx, "89") == f"tensorrt-rtx-{RTX}-sm89-fp16"  # auto prefers FP16
    assert pick(rtx, "89", "fp32") == f"tensorrt-rtx-{RTX}-sm89-fp32"
    assert pick(rtx, "120") == f"tensorrt-rtx-{RTX}-sm120-fp16"
    assert pick(rtx, "86") == f"tensorrt-rtx-{RTX}-sm86-fp32"  # the 1.6 FP16 plan is for another version
    # Datacenter TensorRT first where both flavours are installed and both have an engine.
    both = {"tensorrt": "10.13.0.35", "tensorrt-rtx": RTX}
    assert pick(both, "89") == "tensorrt-10.13.0.35-sm89-fp16"
    assert pick(both, "120") == f"tensorrt-rtx-{RTX}-sm120-fp16"


def test_mismatch_lists_engines_and_the_build_command(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    for key in (f"tensorrt-rtx-{RTX}-sm89-fp16", f"tensorrt-rtx-{RTX}-sm120-fp16"):
        _install(artefact, manifest, key)
    with pytest.raises(EngineMismatchError) as info:
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": RTX}, "86", "auto", "NVIDIA RTX A6000"))
    message = str(info.value)
    assert "NVIDIA RTX A6000 (sm86)" in message and f"tensorrt-rtx {RTX}" in message
    assert f"tensorrt-rtx-{RTX}-sm120-fp16, tensorrt-rtx-{RTX}-sm89-fp16" in message
    assert f"`embedrt build {artefact} --precision fp16 --target sm86 --flavour tensorrt-rtx`" in message
    # A precision that has an engine for another GPU only, and a GPU TensorRT-RTX cannot target.
    with pytest.raises(EngineMismatchError, match=r"--precision fp32 --target sm89 --flavour tensorrt-rtx"):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": RTX}, "89", "fp32"))
    with pytest.raises(EngineMismatchError, match=r"--target sm90 --flavour tensorrt`"):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": RTX}, "90", "fp16"))
    # Another TensorRT version: the engines are there but do not match.
    with pytest.raises(EngineMismatchError, match="engines present: tensorrt-rtx"):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": "1.8.0.1"}, "89", "fp16"))


def test_no_engines_at_all_says_none(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    with pytest.raises(EngineMismatchError, match="engines present: none"):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": RTX}, "89"))


def test_truncated_and_corrupt_plans_are_rejected(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    record = _install(artefact, manifest, f"tensorrt-rtx-{RTX}-sm89-fp16")
    plan_path = engine_dir(artefact, record.key) / "engine.plan"
    good = plan_path.read_bytes()
    assert read_plan(artefact, manifest, record) == good
    plan_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtefactError, match="truncated") as info:
        read_plan(artefact, manifest, record)
    assert "--target sm89 --flavour tensorrt-rtx" in str(info.value)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    plan_path.write_bytes(bytes(flipped))
    with pytest.raises(ArtefactError, match="corrupt"):
        read_plan(artefact, manifest, record)
    plan_path.unlink()
    with pytest.raises(ArtefactError, match="cannot read"):
        read_plan(artefact, manifest, record)


def test_engine_from_another_onnx_is_refused(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    record = _install(artefact, manifest, f"tensorrt-rtx-{RTX}-sm89-fp16")
    stale = replace(record, onnx_sha256="0" * 64)
    with pytest.raises(ArtefactError, match=r"built from another model\.fp16\.onnx"):
        read_plan(artefact, manifest, stale)


def test_broken_records_are_listed_but_never_selected(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    good = _install(artefact, manifest, f"tensorrt-rtx-{RTX}-sm89-fp16")
    broken = engine_dir(artefact, EngineKey.parse(f"tensorrt-rtx-{RTX}-sm120-fp16"))
    broken.mkdir()
    (broken / "engine.plan").write_bytes(b"half a build")  # no engine.json: an unfinished build
    assert present_keys(artefact) == [broken.name, str(good.key)]
    assert [r.key for r in list_engines(artefact)] == [good.key]
    with pytest.raises(ArtefactError, match="unfinished build"):
        read_record(broken)
    (broken / "engine.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="cannot read"):
        read_record(broken)
    (broken / "engine.json").write_text(good.to_json())  # a record describing another key
    with pytest.raises(ArtefactError, match="edited by hand"):
        read_record(broken)
    with pytest.raises(EngineMismatchError):
        select_engine(artefact, manifest, Wanted({"tensorrt-rtx": RTX}, "120"))


def test_write_is_atomic_and_replaces(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    key = f"tensorrt-rtx-{RTX}-sm89-fp16"
    first = _install(artefact, manifest, key, b"first" * 10)
    second = _install(artefact, manifest, key, b"second" * 10)
    assert read_record(engine_dir(artefact, first.key)) == second
    assert sorted(p.name for p in (artefact / "engines").iterdir()) == [key]  # no staging or old dirs left
    with pytest.raises(ArtefactError, match="does not describe this plan"):
        write_engine(artefact, second, b"other bytes")
    assert sorted(p.name for p in (artefact / "engines").iterdir()) == [key]


def test_auto_backend_falls_back_to_onnxruntime_without_a_usable_engine(artefact: Path) -> None:
    manifest = load_manifest(artefact)
    _install(artefact, manifest, f"tensorrt-rtx-{RTX}-sm89-fp16")
    with Embedder.load(artefact) as embedder:  # engines/ exists, but no GPU or no matching engine here
        assert embedder.backend_name == "onnxruntime"
        assert embedder.embed(["hello"]).shape == (1, manifest.hidden_size)


def test_device_model_note_only_for_datacenter_plans_from_another_model() -> None:
    from embedrt.engines import device_model_note

    def record(flavour: str, built_on: str | None) -> EngineRecord:
        version = "10.13.0.35" if flavour == "tensorrt" else RTX
        return EngineRecord(EngineKey(flavour, version, "90", "fp16"), "model.fp16.onnx", "0" * 64, "0" * 64, 1,
                            PROFILES, {"built_on_gpu": built_on})

    note = device_model_note(record("tensorrt", "NVIDIA H100 PCIe (sm90)"), "NVIDIA H200")
    assert note is not None and "built and checked on NVIDIA H100 PCIe" in note and "NVIDIA H200" in note
    assert "--target sm90 --flavour tensorrt" in note
    assert device_model_note(record("tensorrt", "NVIDIA H200 (sm90)"), "NVIDIA H200") is None
    # TensorRT-RTX finishes its kernels for the GPU it loads on; AOT plans were built with no GPU at all.
    assert device_model_note(record("tensorrt-rtx", "NVIDIA RTX A6000 (sm86)"), "NVIDIA RTX 3090") is None
    assert device_model_note(record("tensorrt-rtx", None), "NVIDIA RTX 3090") is None
    assert device_model_note(record("tensorrt", None), "NVIDIA H200") is None  # an older record: nothing to compare
