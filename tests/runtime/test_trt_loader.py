"""Loading a TensorRT engine (``embedrt.backends.trt_loader``): plan loaders, deserialisation, the
engine's I/O, and TensorRT-RTX's runtime cache. TensorRT is faked except in the one ``trt`` test."""

from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_fakes import PLAN, FakeTensorRT, install_engine

from embedrt.backends import trt_loader
from embedrt.backends.cuda import GpuInfo
from embedrt.backends.trt_loader import (
    StoreLoader,
    deserialize,
    engine_io,
    given_plan,
    runtime_config,
    save_runtime_cache,
)
from embedrt.engines import RUNTIME_CACHE_NAME, EngineKey, EngineRecord, ProfileShape, engine_dir
from embedrt.errors import ArtefactError, BackendError, EngineMismatchError
from embedrt.manifest import load_manifest

PROFILES = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 128), (2, 128)))
H200 = GpuInfo(0, "NVIDIA H200", "90", 141 << 30)


@pytest.fixture
def artefact(qwen3_artefact: Path, tmp_path: Path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(qwen3_artefact, out)  # the session fixture is shared: never add engines to it
    return out


def test_store_loader_picks_the_engine_and_notes_another_gpu_model(artefact: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT(PROFILES)
    record = install_engine(artefact, trt, built_on="NVIDIA H100 PCIe (sm90)")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)  # the datacenter flavour, as installed_flavours imports it
    assert trt_loader.installed_flavours()["tensorrt"] is trt
    plan = StoreLoader(artefact, load_manifest(artefact))(H200, "fp32")
    assert (plan.trt, plan.record, plan.data) == (trt, record, PLAN)
    assert plan.runtime_cache == engine_dir(artefact, record.key) / RUNTIME_CACHE_NAME
    assert plan.note is not None and "NVIDIA H100 PCIe" in plan.note and "NVIDIA H200" in plan.note
    with pytest.raises(EngineMismatchError, match=r"engines present: tensorrt-10\.13\.0\.35-sm90-fp32"):
        StoreLoader(artefact, load_manifest(artefact))(GpuInfo(0, "NVIDIA L4", "89", 24 << 30), "fp32")


def test_store_loader_without_a_flavour_names_the_install(artefact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_loader, "FLAVOURS", {"tensorrt": "embedrt_no_such_tensorrt"})
    assert trt_loader.installed_flavours() == {}
    with pytest.raises(BackendError, match=r"no TensorRT flavour is installed: `pip install 'embedrt\[tensorrt-rtx"):
        StoreLoader(artefact, load_manifest(artefact))(H200, "auto")


def test_given_plan_keeps_no_runtime_cache() -> None:
    trt = FakeTensorRT(PROFILES)
    plan = given_plan(trt, trt.record(), PLAN)(H200, "auto")
    assert (plan.trt, plan.data, plan.runtime_cache, plan.note) == (trt, PLAN, None, None)


def test_a_plan_tensorrt_cannot_read_says_why() -> None:
    trt = FakeTensorRT(PROFILES)
    with pytest.raises(ArtefactError, match=r"failed to deserialise \(fake: the plan's magic tag is wrong\); "
                                            r"rebuild it .* with `embedrt build`"):
        deserialize(trt, trt.record(), b"not a plan")


def test_engine_io_reads_dtypes_profiles_and_row_sizes() -> None:
    trt = FakeTensorRT(PROFILES, hidden=8)
    _, engine = deserialize(trt, trt.record(), PLAN)
    io = engine_io(trt, engine, ("input_ids", "attention_mask"), ("sentence_embedding", "embedding_norm"))
    assert io.profiles == PROFILES and (io.max_rows, io.max_seq) == (4, 128)
    assert io.dtypes["input_ids"] == np.int32 and io.dtypes["sentence_embedding"] == np.float32
    assert io.row_elems == {"sentence_embedding": 8, "embedding_norm": 1}
    del engine.dtypes["embedding_norm"]
    with pytest.raises(ArtefactError, match=r"the engine lacks tensors \['embedding_norm'\]"):
        engine_io(trt, engine, ("input_ids", "attention_mask"), ("sentence_embedding", "embedding_norm"))


class _Cache:
    def __init__(self, accepts: bool) -> None:
        self.accepts, self.loaded = accepts, b""

    def deserialize(self, data: bytes) -> bool:
        self.loaded = data
        return self.accepts

    def serialize(self) -> bytes:
        return b"kernels"


class _RuntimeConfig:
    """TensorRT-RTX's IRuntimeConfig, as far as the loader uses it."""

    def __init__(self, accepts: bool = True) -> None:
        self.cache = _Cache(accepts)
        self.cuda_graph_strategy: Any = None
        self.set_to: _Cache | None = None

    def create_runtime_cache(self) -> _Cache:
        return self.cache

    def set_runtime_cache(self, cache: _Cache) -> None:
        self.set_to = cache

    def get_runtime_cache(self) -> _Cache:
        return self.cache


def test_runtime_cache_is_read_at_open_and_written_at_close(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rtx = types.SimpleNamespace(CudaGraphStrategy=types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="whole"))
    record = FakeTensorRT(PROFILES).record()
    path = tmp_path / RUNTIME_CACHE_NAME
    config = _RuntimeConfig()
    engine = types.SimpleNamespace(create_runtime_config=lambda: config)
    assert runtime_config(rtx, engine, record, cuda_graphs=True, cache_path=path) is config
    assert config.set_to is config.cache and config.cuda_graph_strategy == "whole"
    save_runtime_cache(config, path)
    assert path.read_bytes() == b"kernels" and [p.name for p in tmp_path.iterdir()] == [RUNTIME_CACHE_NAME]
    stale = _RuntimeConfig(accepts=False)
    with caplog.at_level(logging.INFO, logger="embedrt.backends.trt_loader"):
        runtime_config(rtx, types.SimpleNamespace(create_runtime_config=lambda: stale), record, False, path)
    assert stale.cache.loaded == b"kernels" and "stale" in caplog.text
    save_runtime_cache(config, tmp_path / "missing-dir" / RUNTIME_CACHE_NAME)  # best effort: no raise


def test_cuda_graphs_are_refused_without_tensorrt_rtx(tmp_path: Path) -> None:
    record = FakeTensorRT(PROFILES).record()
    datacenter = types.SimpleNamespace()  # no CudaGraphStrategy; its engines have no runtime config
    assert runtime_config(datacenter, object(), record, False, tmp_path / RUNTIME_CACHE_NAME) is None
    with pytest.raises(BackendError, match=r"tensorrt 10.13.0.35 does not offer it \(turn cuda_graphs off\)"):
        runtime_config(datacenter, object(), record, True, tmp_path / RUNTIME_CACHE_NAME)


@pytest.mark.trt
def test_unreadable_plan_is_reported_not_a_crash(artefact: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install "
                              "'embedrt[tensorrt-rtx]')")
    graph = load_manifest(artefact).graph("fp16")
    record = EngineRecord(EngineKey.parse("tensorrt-rtx-1.7.1.116-sm89-fp16"), graph.file, graph.sha256,
                          "0" * 64, 1, PROFILES)
    for plan in (b"not a plan at all" * 64, b""):
        with pytest.raises(ArtefactError, match="failed to deserialise"):
            deserialize(trt, record, plan)
