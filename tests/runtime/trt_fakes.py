"""Stand-ins for the TensorRT backend's CUDA and TensorRT parts, so it runs on CPU.

Two levels, for two kinds of test:

- ``FakeSlot``: an execution slot without CUDA, for the pipeline's scheduling and error paths
  (``embedrt.backends.pipeline``), logging each submit / collect to ``events``.
- ``FakeCudart`` and ``FakeTensorRT``: cuda-python's runtime API on host memory (device buffers
  are ordinary memory, copies are ``memmove``) and a TensorRT module whose engine computes a
  row-wise function of its inputs (an embedder's, or with ``task="rerank"`` a cross-encoder's). With
  them the real backend, slots and buffers run end to end: ``install_fake_cuda`` swaps the fake in,
  and ``FakeTensorRT.loader`` hands the backend a plan.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedrt.backends import cuda
from embedrt.backends.trt_loader import PlanLoader, given_plan
from embedrt.engines import EngineKey, EngineRecord, ProfileShape, sha256_bytes, write_engine
from embedrt.manifest import load_manifest

# -- a slot without CUDA ---------------------------------------------------------------------------


class FakeStream:
    def __init__(self, slot: FakeSlot) -> None:
        self.slot, self.syncs = slot, 0

    def synchronize(self) -> None:  # after this, nothing queued on the slot touches its buffers
        self.syncs += 1
        self.slot.queued = False


class FakeSlot:
    """A slot without CUDA: ``submit`` computes, ``collect`` hands it over; both log to ``events``."""

    def __init__(self, name: str = "slot", events: list[tuple[str, ...]] | None = None,
                 fail_on: int | None = None) -> None:
        self.name, self.events, self.fail_on = name, events if events is not None else [], fail_on
        self.profile = -1
        self.calls: list[tuple[int, int]] = []
        self.stream = FakeStream(self)
        self.queued = False
        self.pending: dict[str, np.ndarray] | None = None

    def submit(self, profile: int, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        assert not self.queued, "a slot was reused while work queued on it could still touch its buffers"
        ids = inputs["input_ids"]
        if ids[0, 0] == self.fail_on:
            raise RuntimeError("cudaErrorIllegalAddress")
        self.profile = profile
        self.calls.append(ids.shape)
        self.events.append(("submit", self.name, str(ids[0, 0])))
        self.queued = True
        self.pending = {"sentence_embedding": ids[:, :2].astype(np.float32),
                        "embedding_norm": ids[:, 0].astype(np.float32)}
        return {name: value.shape for name, value in self.pending.items()}

    def collect(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        self.stream.synchronize()
        out, self.pending = self.pending, None
        assert out is not None and {n: v.shape for n, v in out.items()} == shapes
        self.events.append(("collect", self.name, str(out["embedding_norm"][0].astype(int))))
        return out

    def wait(self) -> None:
        self.stream.synchronize()


# -- CUDA on host memory ---------------------------------------------------------------------------


class FakeCudart:
    """The calls ``embedrt.backends.cuda`` makes, answering ``(error, value...)`` as cuda-python does."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1

    def __init__(self, name: str = "NVIDIA H200", sm: tuple[int, int] = (9, 0)) -> None:
        self.name, self.sm = name, sm
        self.memory: dict[int, Any] = {}  # pointer -> the ctypes buffer behind it (device and pinned)
        self.streams: set[int] = set()
        self.syncs = 0
        self._handles = itertools.count(1)

    def cudaGetErrorString(self, err: Any) -> tuple[Any, bytes]:
        return self.cudaError_t.cudaSuccess, b"fake CUDA error"

    def cudaGetDeviceCount(self) -> tuple[Any, int]:
        return self.cudaError_t.cudaSuccess, 1

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:
        prop = types.SimpleNamespace(name=self.name.encode(), major=self.sm[0], minor=self.sm[1],
                                     totalGlobalMem=141 << 30)
        return self.cudaError_t.cudaSuccess, prop

    def cudaSetDevice(self, index: int) -> tuple[Any]:
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, int]:
        handle = next(self._handles)
        self.streams.add(handle)
        return self.cudaError_t.cudaSuccess, handle

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any]:
        self.syncs += 1
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: int) -> tuple[Any]:
        self.streams.remove(stream)
        return (self.cudaError_t.cudaSuccess,)

    def _alloc(self, nbytes: int) -> tuple[Any, int]:
        buffer = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buffer)] = buffer
        return self.cudaError_t.cudaSuccess, ctypes.addressof(buffer)

    def cudaMalloc(self, nbytes: int) -> tuple[Any, int]:
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, int]:
        return self._alloc(nbytes)

    def cudaFree(self, ptr: int) -> tuple[Any]:
        del self.memory[ptr]
        return (self.cudaError_t.cudaSuccess,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any, stream: int) -> tuple[Any]:
        assert stream in self.streams, "a copy on a stream that is not open"
        ctypes.memmove(dst, src, nbytes)
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemGetInfo(self) -> tuple[Any, int, int]:
        used = sum(ctypes.sizeof(b) for b in self.memory.values())
        return self.cudaError_t.cudaSuccess, (141 << 30) - used, 141 << 30


def install_fake_cuda(monkeypatch: pytest.MonkeyPatch, **gpu: Any) -> FakeCudart:
    """Make ``embedrt.backends.cuda`` talk to a ``FakeCudart``; returned to check for leaks."""
    fake = FakeCudart(**gpu)
    monkeypatch.setattr(cuda, "runtime_api", lambda: fake)
    return fake


# -- TensorRT --------------------------------------------------------------------------------------

PLAN = b"fake plan"
INPUT_NAMES = ("input_ids", "attention_mask")


def _view(ptr: int, dtype: np.dtype[Any], count: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr), dtype=dtype)


def embed_rows(ids: np.ndarray, mask: np.ndarray, hidden: int) -> np.ndarray:
    """What the fake engine computes: per row, a mean over its unmasked tokens (padding changes nothing)."""
    weights = np.arange(1, hidden + 1, dtype=np.float64) / hidden
    valid = mask.astype(np.float64)
    mean = (ids.astype(np.float64) * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return np.sin(mean[:, None] * weights[None, :]).astype(np.float32)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, int]] = {}
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.profile = profile
        return 0 <= profile < len(self.engine.profiles)

    def set_input_shape(self, name: str, shape: tuple[int, int]) -> bool:
        self.shapes[name] = tuple(shape)  # type: ignore[assignment]
        return self.engine.profiles[self.profile].covers(*shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        rows = self.shapes["input_ids"][0]
        return (rows, self.engine.hidden) if name == "sentence_embedding" else (rows,)

    def execute_async_v3(self, stream: int) -> bool:
        if self.engine.trt.fail:
            raise RuntimeError(self.engine.trt.fail)  # what a binding raises on a CUDA error
        rows, seq = self.shapes["input_ids"]
        inputs = {n: _view(self.addresses[n], self.engine.dtypes[n], rows * seq).reshape(rows, seq)
                  for n in self.engine.inputs}
        for name, value in self.engine.compute(inputs).items():
            _view(self.addresses[name], np.dtype(np.float32), value.size)[:] = value.ravel()
        return True


def score_rows(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
    """What the fake reranker engine computes: per row, a logit from its unmasked tokens and their types."""
    valid = mask.astype(np.float64)
    mean = ((ids + 7 * types).astype(np.float64) * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return np.sin(mean / 50).astype(np.float32) * 4


class FakeEngine:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.profiles, self.hidden = trt, trt.profiles, trt.hidden
        int32, float32 = np.dtype(np.int32), np.dtype(np.float32)
        if trt.task == "rerank":  # a text-pair cross-encoder's engine
            self.inputs: tuple[str, ...] = (*INPUT_NAMES, "token_type_ids")
            self.dtypes = {**dict.fromkeys(self.inputs, int32), "score": float32, "logit": float32}
        else:
            self.inputs = INPUT_NAMES
            self.dtypes = {**dict.fromkeys(self.inputs, int32), "sentence_embedding": float32,
                           "embedding_norm": float32}
        self.contexts = 0

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.trt.task == "rerank":
            logit = score_rows(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
            return {"score": (1 / (1 + np.exp(-logit))).astype(np.float32), "logit": logit}
        embedding = embed_rows(inputs["input_ids"], inputs["attention_mask"], self.hidden)
        return {"sentence_embedding": embedding, "embedding_norm": np.linalg.norm(embedding, axis=1)}

    @property
    def num_io_tensors(self) -> int:
        return len(self.dtypes)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, index: int) -> str:
        return list(self.dtypes)[index]

    def get_tensor_dtype(self, name: str) -> np.dtype[Any]:
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, int], ...]:
        p = self.profiles[profile]
        return p.min, p.opt, p.max

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1) if name in self.inputs else (-1, self.hidden) if name == "sentence_embedding" else (-1,)

    def create_execution_context(self, config: Any = None) -> FakeContext | None:
        if self.contexts >= self.trt.max_contexts:
            return None  # what TensorRT answers when activation memory runs out
        self.contexts += 1
        return FakeContext(self)


class FakeTensorRT(types.ModuleType):
    """A TensorRT module with just what the runtime backend calls (datacenter-like: no runtime config)."""

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self) -> None:
            pass

    def __init__(self, profiles: tuple[ProfileShape, ...], hidden: int = 8, version: str = "10.13.0.35",
                 max_contexts: int = 8, task: str = "embed") -> None:
        """``task`` "rerank": an engine with token type ids in and score / logit out (a cross-encoder's)."""
        super().__init__(f"fake_tensorrt_{id(self)}")  # its own logger (make_logger keeps one per module)
        self.__version__ = version
        self.profiles, self.hidden, self.max_contexts, self.task = profiles, hidden, max_contexts, task
        self.fail: str | None = None  # set: every execute raises this, as a binding does on a CUDA error
        trt = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
                if plan != PLAN:
                    self.logger.log(trt.ILogger.Severity.ERROR, "fake: the plan's magic tag is wrong")
                    return None
                return FakeEngine(trt)

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: np.dtype[Any]) -> type:
        return dtype.type  # type: ignore[no-any-return]

    def record(self, precision: str = "fp32", built_on: str | None = None) -> EngineRecord:
        key = EngineKey("tensorrt", self.__version__, "90", precision)
        return EngineRecord(key, f"model.{precision}.onnx", "0" * 64, "0" * 64, len(PLAN), self.profiles,
                            {"built_on_gpu": built_on})

    def loader(self, plan: bytes = PLAN, precision: str = "fp32") -> PlanLoader:
        """A plan loader handing the backend this engine, as the builder's check does."""
        return given_plan(self, self.record(precision), plan)


def install_engine(artefact: Path, trt: FakeTensorRT, precision: str = "fp32",
                   built_on: str | None = None) -> EngineRecord:
    """The fake engine in the artefact's store, recorded as a datacenter plan for sm90 built from its graph."""
    graph = load_manifest(artefact).graph(precision)
    record = replace(trt.record(precision, built_on), onnx_file=graph.file, onnx_sha256=graph.sha256,
                     plan_sha256=sha256_bytes(PLAN))
    write_engine(artefact, record, PLAN)
    return record


__all__ = ["PLAN", "FakeCudart", "FakeSlot", "FakeTensorRT", "embed_rows", "install_engine", "install_fake_cuda",
           "score_rows"]
