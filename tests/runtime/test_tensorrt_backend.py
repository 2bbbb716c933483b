"""The TensorRT backend's logic without a GPU: what it reports, which errors it passes through, and
what it says about an engine built on another GPU model. CUDA and TensorRT are faked where touched."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeSlot

from embedrt.backends.base import Batch
from embedrt.backends.tensorrt import TensorRTBackend, _Pool
from embedrt.config import BackendConfig
from embedrt.engines import EngineKey, EngineRecord, ProfileShape
from embedrt.errors import BackendError, InvalidInputError, OverloadedError
from embedrt.manifest import load_manifest

PROFILE = ProfileShape((1, 1), (4, 64), (4, 64))


def _backend(artefact: Path) -> TensorRTBackend:
    backend = TensorRTBackend(artefact, load_manifest(artefact), BackendConfig())
    backend._profiles, backend._pool = (PROFILE,), _Pool([FakeSlot()], (PROFILE,))  # type: ignore[list-item]
    return backend


def _batch(rows: int, seq: int) -> Batch:
    ids = np.ones((rows, seq), np.int64)
    return Batch(ids, np.ones_like(ids), np.full(rows, seq))


def test_describe_names_the_engine_key_the_server_reports(qwen3_artefact: Path) -> None:
    backend = _backend(qwen3_artefact)
    key = EngineKey("tensorrt", "10.13.0.35", "90", "fp16")
    backend.record = EngineRecord(key, "model.fp16.onnx", "0" * 64, "0" * 64, 1, (PROFILE,))
    assert backend.describe()["engine_key"] == "tensorrt-10.13.0.35-sm90-fp16"


def test_client_errors_pass_through_run_many_unchanged(qwen3_artefact: Path) -> None:
    backend = _backend(qwen3_artefact)
    # A length no profile takes: the backend's own check.
    with pytest.raises(InvalidInputError, match="no engine profile accepts sequence length 65") as info:
        list(backend.run_many([_batch(1, 65)]))
    assert not isinstance(info.value, BackendError)

    # Collation is lazy: an error raised while the caller makes the next batch is the caller's.
    def batches(error: Exception) -> Iterator[Batch]:
        yield _batch(1, 8)
        raise error

    for error in (InvalidInputError("text 3 is not a string"), OverloadedError("queue full")):
        with pytest.raises(type(error)) as raised:
            list(backend.run_many(batches(error)))
        assert raised.value is error
    assert backend._pool is not None and len(backend._pool.free) == 1 and not backend._pool.busy


def test_binding_failures_are_still_backend_errors(qwen3_artefact: Path) -> None:
    backend = _backend(qwen3_artefact)
    assert backend._pool is not None
    backend._pool.free[0].fail_on = 1  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="cudaErrorIllegalAddress"):
        list(backend.run_many([_batch(1, 8)]))




def _record(flavour: str, built_on: str | None) -> EngineRecord:
    key = EngineKey(flavour, "10.13.0.35" if flavour == "tensorrt" else "1.7.1.116", "90", "fp16")
    return EngineRecord(key, "model.fp16.onnx", "0" * 64, "0" * 64, 1, (PROFILE,), {"built_on_gpu": built_on})


def test_a_plan_from_another_gpu_model_is_named_on_open(qwen3_artefact: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from embedrt.backends import _cuda
    from embedrt.backends import tensorrt as module

    record = _record("tensorrt", "NVIDIA H100 PCIe (sm90)")
    monkeypatch.setattr(module, "installed_flavours", lambda: {"tensorrt": types.SimpleNamespace(__version__="10")})
    monkeypatch.setattr(_cuda, "gpu_info", lambda index: _cuda.GpuInfo(0, "NVIDIA H200", "90", 141 << 30))
    monkeypatch.setattr(_cuda, "set_device", lambda index: None)
    monkeypatch.setattr(module, "select_engine", lambda artefact, manifest, wanted: record)
    monkeypatch.setattr(module, "read_plan", lambda artefact, manifest, record: b"plan")
    loaded: list[EngineRecord] = []

    def load(self: TensorRTBackend, trt: object, record: EngineRecord, plan: bytes) -> None:
        self.record, self._engine = record, object()
        loaded.append(record)

    monkeypatch.setattr(TensorRTBackend, "_load", load)
    backend = TensorRTBackend(qwen3_artefact, load_manifest(qwen3_artefact), BackendConfig())
    with caplog.at_level(logging.WARNING, logger="embedrt.backends.tensorrt"):
        backend.open()
    assert loaded == [record]  # a warning, not a refusal: TensorRT itself loads such plans
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "NVIDIA H100 PCIe" in warned[0] and "NVIDIA H200" in warned[0], warned
    assert "embedrt build" in warned[0]
    assert backend.describe()["engine_warning"] == warned[0]
