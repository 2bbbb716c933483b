"""The engine store: keys, selection among several engines, mismatch messages, plan checks.

No TensorRT is needed here except in the deserialisation test (TensorRT-RTX, marker ``trt``): the
store is plain files, and every check happens before TensorRT sees a plan's bytes.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeSlot

from embedrt import Embedder
from embedrt.backends.base import Batch
from embedrt.backends.tensorrt import TensorRTBackend, _Pool
from embedrt.config import BackendConfig
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
from embedrt.errors import ArtefactError, BackendError, EngineMismatchError
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


def test_tensorrt_backend_without_gpu_is_a_clear_backend_error(artefact: Path) -> None:
    from embedrt.backends import _cuda

    try:
        _cuda.gpu_info(0)
    except BackendError:
        pass  # the expected case in CI: no driver, or no cuda-python
    else:
        pytest.skip("a GPU is present: tests/gpu covers the TensorRT backend there")
    with pytest.raises(BackendError, match=r"GPU|CUDA|cuda-python|TensorRT flavour"):
        Embedder.load(artefact, "tensorrt")
    with pytest.raises(BackendError, match="device cpu"):
        TensorRTBackend(artefact, load_manifest(artefact), BackendConfig(device="cpu")).open()


def test_limits_and_row_splitting_follow_the_profiles(qwen3_artefact: Path) -> None:
    manifest = load_manifest(qwen3_artefact)
    backend = TensorRTBackend(qwen3_artefact, manifest, BackendConfig())
    profiles = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 100), (2, 100)))
    slot = FakeSlot()
    backend._profiles, backend._pool = profiles, _Pool([slot], profiles)  # type: ignore[list-item]
    limits = backend.limits()
    assert (limits.max_batch, limits.max_sequence) == (4, 100)
    assert limits.sequence_buckets == (16, 32, 64, 100)
    ids = np.arange(5 * 80, dtype=np.int64).reshape(5, 80)
    out = backend.run(Batch(ids, np.ones_like(ids), np.full(5, 80)))
    assert slot.calls == [(2, 80), (2, 80), (1, 80)]  # the long profile takes two rows at a time
    np.testing.assert_array_equal(out["sentence_embedding"], ids[:, :2].astype(np.float32))
    with pytest.raises(Exception, match="no engine profile accepts sequence length 101"):
        backend.run(Batch(np.ones((1, 101), np.int64), np.ones((1, 101), np.int64), np.array([101])))


def test_pool_never_runs_one_profile_twice_at_once() -> None:
    profiles = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 1), (4, 64), (4, 64)),
                ProfileShape((1, 65), (2, 128), (2, 128)))
    pool = _Pool([FakeSlot(), FakeSlot(), FakeSlot()], profiles)  # type: ignore[list-item]
    first = pool.acquire(2, 32)
    second = pool.acquire(2, 32)  # the copy of the short profile
    assert {first[1], second[1]} == {0, 1}
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1, 16)[1]))
    waiter.start()
    time.sleep(0.2)
    assert not got  # both short profiles busy: it waits although a slot is free
    long = pool.acquire(1, 100)  # the long profile is free, and so is a slot
    assert long[1] == 2
    pool.release(*first)
    waiter.join(5)
    assert got == [first[1]]
    with pytest.raises(BackendError, match="no optimisation profile covers"):
        pool.acquire(3, 100)


@pytest.mark.trt
def test_unreadable_plan_is_reported_not_a_crash(artefact: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install "
                              "'embedrt[tensorrt-rtx]')")
    from embedrt.backends.tensorrt import deserialize

    record = _install(artefact, load_manifest(artefact), f"tensorrt-rtx-{RTX}-sm89-fp16")
    for plan in (b"not a plan at all" * 64, b""):
        with pytest.raises(ArtefactError, match="failed to deserialise"):
            deserialize(trt, record, plan)


def _pipelined(profiles: tuple[ProfileShape, ...], slots: list[FakeSlot],
               qwen3_artefact: Path) -> tuple[TensorRTBackend, _Pool]:
    backend = TensorRTBackend(qwen3_artefact, load_manifest(qwen3_artefact), BackendConfig())
    pool = _Pool(slots, profiles)  # type: ignore[arg-type]
    backend._profiles, backend._pool = profiles, pool
    return backend, pool


def _batches(starts: list[int], events: list[tuple[str, ...]]) -> Iterator[Batch]:
    for start in starts:
        events.append(("pull", str(start)))
        ids = np.arange(start, start + 2 * 32, dtype=np.int64).reshape(2, 32)
        yield Batch(ids, np.ones_like(ids), np.full(2, 32))


def _all_within(backend: TensorRTBackend, batches: Iterator[Batch], seconds: float = 10) -> list[dict[str, np.ndarray]]:
    """run_many's outputs, failing (not hanging) if it deadlocks on a context or profile it holds."""
    outs: list[dict[str, np.ndarray]] = []
    worker = threading.Thread(target=lambda: outs.extend(backend.run_many(batches)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "run_many waited on a context or profile it held itself"
    return outs


def test_run_many_overlaps_batches_on_two_contexts(qwen3_artefact: Path) -> None:
    events: list[tuple[str, ...]] = []
    short = ProfileShape((1, 1), (4, 64), (4, 64))
    backend, pool = _pipelined((short, short), [FakeSlot("A", events), FakeSlot("B", events)], qwen3_artefact)
    starts = [0, 1000, 2000, 3000]
    outs = _all_within(backend, _batches(starts, events))
    for start, out in zip(starts, outs, strict=True):  # in order, each its own batch's result
        assert out["embedding_norm"].tolist() == [start, start + 32]
    # Batch 1 is pulled (collated) and submitted on the other context before batch 0 is collected.
    assert events[:6] == [("pull", "0"), ("submit", "A", "0"), ("pull", "1000"), ("submit", "B", "1000"),
                          ("pull", "2000"), ("collect", "A", "0")]
    assert sum(e[0] == "collect" for e in events) == 4
    assert len(pool.free) == 2 and not pool.busy


def test_run_many_on_one_profile_waits_for_itself_not_forever(qwen3_artefact: Path) -> None:
    # Two contexts but one profile: TensorRT forbids running it twice at once, so batches alternate.
    events: list[tuple[str, ...]] = []
    profile = ProfileShape((1, 1), (4, 64), (4, 64))
    backend, pool = _pipelined((profile,), [FakeSlot("A", events), FakeSlot("B", events)], qwen3_artefact)
    outs = _all_within(backend, _batches([0, 100, 200], events))
    assert [o["embedding_norm"][0] for o in outs] == [0, 100, 200]
    kinds = [e[0] for e in events if e[0] != "pull"]
    assert kinds == ["submit", "collect"] * 3
    assert len(pool.free) == 2 and not pool.busy


def test_run_many_failure_frees_every_context(qwen3_artefact: Path) -> None:
    events: list[tuple[str, ...]] = []
    short = ProfileShape((1, 1), (4, 64), (4, 64))
    slots = [FakeSlot("A", events, fail_on=2000), FakeSlot("B", events, fail_on=2000)]
    backend, pool = _pipelined((short, short), slots, qwen3_artefact)
    with pytest.raises(BackendError, match=r"TensorRT failed.*cudaErrorIllegalAddress"):
        list(backend.run_many(_batches([0, 1000, 2000, 3000], events)))
    assert len(pool.free) == 2 and not pool.busy
    assert sum(s.stream.syncs for s in slots) >= 2  # what was queued was waited for before reuse
    # Stopping early (a caller that breaks out) frees the contexts too.
    outputs = backend.run_many(_batches([0, 1000, 3000], events))
    assert next(outputs)["embedding_norm"][0] == 0
    outputs.close()
    assert len(pool.free) == 2 and not pool.busy
    assert backend.run(next(_batches([5000], events)))["embedding_norm"].tolist() == [5000, 5032]


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
