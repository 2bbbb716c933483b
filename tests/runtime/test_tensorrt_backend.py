"""The TensorRT backend assembled (``embedrt.backends.tensorrt``), without a GPU.

CUDA is ``FakeCudart`` (host memory) and TensorRT a ``FakeTensorRT`` module, so open, the slots,
the pipeline and close are the real code: what it reports, which errors it passes through, what it
says about an engine built on another GPU model, and that it gives back every buffer.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_fakes import FakeCudart, FakeTensorRT, embed_rows, install_engine, install_fake_cuda

from embedrt import Embedder
from embedrt.backends.base import Batch
from embedrt.backends.tensorrt import TensorRTBackend
from embedrt.config import BackendConfig
from embedrt.engines import ProfileShape
from embedrt.errors import BackendError, InvalidInputError, OverloadedError
from embedrt.info import BackendInfo
from embedrt.manifest import load_manifest

PROFILE = ProfileShape((1, 1), (4, 64), (4, 64))


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    return install_fake_cuda(monkeypatch)


@pytest.fixture
def artefact(qwen3_artefact: Path, tmp_path: Path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(qwen3_artefact, out)  # the session fixture is shared: never add engines to it
    return out


def _open(artefact: Path, profiles: tuple[ProfileShape, ...] = (PROFILE,), trt: FakeTensorRT | None = None,
          **config: Any) -> TensorRTBackend:
    trt = trt or FakeTensorRT(profiles)
    backend = TensorRTBackend(artefact, load_manifest(artefact), BackendConfig(**config), loader=trt.loader())
    backend.open()
    return backend


def _batch(rows: int, seq: int, start: int = 1) -> Batch:
    ids = np.arange(start, start + rows * seq, dtype=np.int64).reshape(rows, seq)
    return Batch(ids, np.ones_like(ids), np.full(rows, seq))


def test_describe_names_the_engine_key_the_server_reports(qwen3_artefact: Path, fake_cuda: FakeCudart) -> None:
    backend = _open(qwen3_artefact)
    facts = backend.describe()
    assert facts.engine_key == "tensorrt-10.13.0.35-sm90-fp32"
    assert facts == BackendInfo(backend="tensorrt", precision="fp32", device="cuda",
                                engine_key="tensorrt-10.13.0.35-sm90-fp32", profiles=("1x1:4x64:4x64",), contexts=1,
                                gpu="NVIDIA H200 (sm90)")
    backend.close()


def test_limits_and_row_splitting_follow_the_profiles(qwen3_artefact: Path, fake_cuda: FakeCudart) -> None:
    profiles = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 100), (2, 100)))
    with _open(qwen3_artefact, profiles) as backend:
        limits = backend.limits()
        assert (limits.max_batch, limits.max_sequence) == (4, 100)
        assert limits.sequence_buckets == (16, 32, 64, 100)
        assert backend.describe().contexts == 2  # one per profile, at most CONTEXTS
        batch = _batch(5, 80)  # more rows than the long profile takes: split, then merged in order
        out = backend.run(batch)
        np.testing.assert_allclose(out["sentence_embedding"], embed_rows(batch.input_ids, batch.attention_mask, 8),
                                   rtol=1e-6)
        with pytest.raises(InvalidInputError, match="no engine profile accepts sequence length 101"):
            backend.run(_batch(1, 101))


def test_client_errors_pass_through_run_many_unchanged(qwen3_artefact: Path, fake_cuda: FakeCudart) -> None:
    backend = _open(qwen3_artefact)
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
    assert backend.run(_batch(1, 8))["sentence_embedding"].shape == (1, 8)  # its one context came back
    backend.close()


def test_binding_failures_are_still_backend_errors(qwen3_artefact: Path, fake_cuda: FakeCudart) -> None:
    trt = FakeTensorRT((PROFILE,))
    backend = _open(qwen3_artefact, trt=trt)
    trt.fail = "cudaErrorIllegalAddress"
    with pytest.raises(BackendError, match=r"TensorRT failed on a batch of shape \(1, 8\).*cudaErrorIllegalAddress"):
        list(backend.run_many([_batch(1, 8)]))
    trt.fail = None
    assert backend.run(_batch(1, 8))["embedding_norm"].shape == (1,)  # the failure affected that batch only
    backend.close()


def test_close_gives_every_buffer_back(qwen3_artefact: Path, fake_cuda: FakeCudart) -> None:
    profiles = (PROFILE, ProfileShape((1, 65), (2, 128), (2, 128)))
    backend = _open(qwen3_artefact, profiles)
    assert fake_cuda.memory and len(fake_cuda.streams) == 2
    backend.run(_batch(3, 16))
    backend.close()
    assert not fake_cuda.memory and not fake_cuda.streams


def test_a_plan_from_another_gpu_model_is_named_on_open(artefact: Path, fake_cuda: FakeCudart,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    trt = FakeTensorRT((PROFILE,))
    record = install_engine(artefact, trt, built_on="NVIDIA H100 PCIe (sm90)")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)  # the datacenter flavour, found by the default loader
    backend = TensorRTBackend(artefact, load_manifest(artefact), BackendConfig(precision="fp32"))
    with caplog.at_level(logging.WARNING, logger="embedrt.backends.tensorrt"):
        backend.open()
    assert backend.record == record  # a warning, not a refusal: TensorRT itself loads such plans
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "NVIDIA H100 PCIe" in warned[0] and "NVIDIA H200" in warned[0], warned
    assert "embedrt build" in warned[0]
    assert backend.describe().notes["engine_warning"] == warned[0]
    backend.close()


def test_cuda_graphs_refused_on_datacenter_tensorrt_free_what_open_made(artefact: Path, fake_cuda: FakeCudart,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT((PROFILE,))
    install_engine(artefact, trt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    backend = TensorRTBackend(artefact, load_manifest(artefact), BackendConfig(precision="fp32", cuda_graphs=True))
    for _ in range(2):  # a failed open leaves nothing half-open: trying again fails the same way
        with pytest.raises(BackendError, match="turn cuda_graphs off"):
            backend.open()
    assert not fake_cuda.memory
    with pytest.raises(BackendError, match="not open"):
        backend.run(_batch(1, 8))


def test_tensorrt_backend_without_gpu_is_a_clear_backend_error(artefact: Path) -> None:
    from embedrt.backends import cuda

    try:
        cuda.gpu_info(0)
    except BackendError:
        pass  # the expected case in CI: no driver, or no cuda-python
    else:
        pytest.skip("a GPU is present: tests/gpu covers the TensorRT backend there")
    install_engine(artefact, FakeTensorRT((PROFILE,)))
    with pytest.raises(BackendError, match=r"GPU|CUDA|cuda-python|TensorRT flavour"):
        Embedder.load(artefact, "tensorrt")
    with pytest.raises(BackendError, match="device cpu"):
        TensorRTBackend(artefact, load_manifest(artefact), BackendConfig(device="cpu")).open()
