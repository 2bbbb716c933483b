"""TensorRT backend: runs the artefact's engine for this GPU, with its own CUDA buffers and no torch.

Open picks the engine from the store (``embedrt.engines``) by GPU compute capability, TensorRT
flavour / version and precision, checks the plan against ``engine.json`` and the manifest, then
deserialises it. Several execution contexts ("slots") each own a stream, device buffers sized at
the profile maxima and pinned host staging, allocated once and reused: a run copies in, sets
shapes and addresses, enqueues ``execute_async_v3``, copies out and synchronises its own stream.
``run_many`` pipelines: the next batch is enqueued on another slot before the current one is waited for.

Two runs never use one optimisation profile at the same time (TensorRT's rule for dynamic shapes
across concurrent contexts), so concurrency comes from different profiles, or from an engine built
with copies of each profile (``embedrt build --contexts N``).

``tensorrt`` / ``tensorrt_rtx_bindings`` and cuda-python are imported in ``open``, never at import.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import deque
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_SEQUENCE_BUCKETS, BackendConfig
from ..engines import (
    CONTEXTS,
    FLAVOURS,
    RUNTIME_CACHE_NAME,
    EngineRecord,
    ProfileShape,
    Wanted,
    device_model_note,
    engine_dir,
    read_plan,
    select_engine,
)
from ..errors import ArtefactError, BackendError, EmbedrtError, InvalidInputError
from ..manifest import Manifest
from . import _cuda
from .base import Backend, Batch, ShapeLimits

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("sentence_embedding", "embedding_norm")
# Contexts per engine, at most one per profile (two runs never share a profile). Two let one batch's
# copies overlap another's compute; each context holds activation memory for the largest profile.
MAX_CONTEXTS = CONTEXTS


def installed_flavours() -> dict[str, Any]:
    """Importable TensorRT flavours, datacenter first: name -> module."""
    found: dict[str, Any] = {}
    for name, module in FLAVOURS.items():
        try:
            found[name] = importlib.import_module(module)
        except ImportError:
            continue
    return found


_LOGGERS: dict[str, Any] = {}


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the last errors, so a failed deserialise can say why.

    One per TensorRT module: TensorRT keeps the first logger it is given process-wide and ignores
    later ones, so a fresh logger per call would never see a message.
    """
    if trt.__name__ in _LOGGERS:
        return _LOGGERS[trt.__name__]

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=4)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)

    _LOGGERS[trt.__name__] = _Logger()
    return _LOGGERS[trt.__name__]


def deserialize(trt: Any, record: EngineRecord, plan: bytes) -> tuple[Any, Any]:
    """(runtime, engine); a plan TensorRT cannot read is an ArtefactError with TensorRT's reason."""
    logger = make_logger(trt)
    logger.errors.clear()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        why = "; ".join(logger.errors) or "TensorRT gave no reason"
        raise ArtefactError(f"engine {record.key} failed to deserialise ({why}); rebuild it for this GPU "
                            f"and TensorRT version with `embedrt build`")
    return runtime, engine


class _Slot:
    """One execution context with its stream and preallocated device / pinned host buffers."""

    def __init__(self, context: Any, io: dict[str, np.dtype[Any]], max_rows: int, max_seq: int,
                 row_elems: dict[str, int]) -> None:
        self.context = context
        self.stream = _cuda.Stream()
        self.profile = -1  # set on first use: switching is enqueued on this slot's stream
        self.io = io
        self.row_elems = row_elems
        self.device: dict[str, _cuda.DeviceBuffer] = {}
        self.host: dict[str, _cuda.PinnedBuffer] = {}
        for name, dtype in io.items():
            elems = max_rows * (max_seq if name in INPUTS else row_elems[name])
            self.device[name] = _cuda.DeviceBuffer(elems * dtype.itemsize)
            self.host[name] = _cuda.PinnedBuffer(elems * dtype.itemsize, dtype)

    def submit(self, profile: int, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Enqueue copies in, the engine and copies out on this slot's stream; return the output shapes.

        Nothing waits here: the caller may submit on another slot before ``collect``-ing this one.
        """
        ctx, stream = self.context, self.stream
        rows, seq = inputs[INPUTS[0]].shape
        if profile != self.profile:
            if not ctx.set_optimization_profile_async(profile, stream.handle):
                raise BackendError(f"TensorRT refused optimisation profile {profile}")
            self.profile = profile
        for name in INPUTS:
            count = rows * seq
            staged = self.host[name].array[:count].reshape(rows, seq)
            np.copyto(staged, inputs[name], casting="unsafe")  # int64 -> int32 where the engine binds int32
            _cuda.copy_to_device(self.device[name], self.host[name], count * self.io[name].itemsize, stream)
            if not ctx.set_input_shape(name, (rows, seq)):
                raise BackendError(f"TensorRT rejected shape {(rows, seq)} for {name} under profile {profile}")
        for name, buffer in self.device.items():
            ctx.set_tensor_address(name, buffer.ptr)
        if not ctx.execute_async_v3(stream.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed on a batch of shape {(rows, seq)}")
        shapes = {}
        for name in self.io:
            if name in INPUTS:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            shapes[name] = shape
            _cuda.copy_to_host(self.host[name], self.device[name], int(np.prod(shape)) * self.io[name].itemsize,
                               stream)
        return shapes

    def collect(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Wait for this slot's stream, then copy the outputs out of pinned memory (the slot is reusable)."""
        self.stream.synchronize()
        return {name: self.host[name].array[: int(np.prod(shape))].reshape(shape).astype(np.float32, copy=True)
                for name, shape in shapes.items()}

    def close(self) -> None:
        for device in self.device.values():
            device.close()
        for host in self.host.values():
            host.close()
        self.stream.close()
        self.context = None


class _Pool:
    """Hands out a free slot and a free profile covering the shape; waits when none is free."""

    def __init__(self, slots: list[_Slot], profiles: tuple[ProfileShape, ...]) -> None:
        self.free = list(slots)
        self.profiles = profiles
        self.busy: set[int] = set()
        self.cond = threading.Condition()

    def acquire(self, rows: int, seq: int, wait: bool = True) -> tuple[_Slot, int] | None:
        """A free slot and a free profile covering ``rows x seq``; ``None`` if none is free and not ``wait``."""
        fitting = [i for i, p in enumerate(self.profiles) if p.covers(rows, seq)]
        if not fitting:
            raise BackendError(f"no optimisation profile covers a batch of {rows}x{seq}")
        # Tightest profile first: its kernels were tuned closest to this shape.
        fitting.sort(key=lambda i: self.profiles[i].max[0] * self.profiles[i].max[1])
        with self.cond:
            while True:
                idle = [i for i in fitting if i not in self.busy]
                if self.free and idle:
                    profile = idle[0]
                    # Prefer a slot already on that profile: switching costs an enqueue.
                    slot = next((s for s in self.free if s.profile == profile), self.free[0])
                    self.free.remove(slot)
                    self.busy.add(profile)
                    return slot, profile
                if not wait:
                    return None
                self.cond.wait()

    def release(self, slot: _Slot, profile: int) -> None:
        with self.cond:
            self.free.append(slot)
            self.busy.discard(profile)
            self.cond.notify_all()


class _Job:
    """One batch of ``run_many``: its parts' inputs, and their outputs once collected."""

    def __init__(self, shape: tuple[int, int], inputs: list[dict[str, np.ndarray]]) -> None:
        self.shape = shape
        self.inputs = inputs
        self.outputs: list[dict[str, np.ndarray] | None] = [None] * len(inputs)

    @property
    def done(self) -> bool:
        return all(out is not None for out in self.outputs)

    def merged(self) -> dict[str, np.ndarray]:
        parts = [out for out in self.outputs if out is not None]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _Part:
    """One part of a job, submitted on ``slot`` under ``profile`` and not yet collected."""

    def __init__(self, job: _Job, index: int, slot: _Slot, profile: int) -> None:
        self.job, self.index, self.slot, self.profile = job, index, slot, profile
        self.shapes: dict[str, tuple[int, ...]] = {}


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artefact: Path, manifest: Manifest, config: BackendConfig) -> None:
        super().__init__(artefact, manifest, config)
        self.record: EngineRecord | None = None
        self.gpu: _cuda.GpuInfo | None = None
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._runtime_config: Any = None
        self._slots: list[_Slot] = []
        self._pool: _Pool | None = None
        self._profiles: tuple[ProfileShape, ...] = ()
        self._device_note: str | None = None  # the engine was built on another GPU model
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        return self.record.key.precision if self.record else self.config.precision

    # -- open / close ----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            if self.config.device == "cpu":
                raise BackendError("the TensorRT backend runs on a GPU; use backend onnxruntime for device cpu")
            flavours = installed_flavours()
            if not flavours:
                raise BackendError("no TensorRT flavour is installed: `pip install 'embedrt[tensorrt-rtx]'` "
                                   "(RTX / workstation GPUs) or install datacenter TensorRT (`tensorrt`)")
            self.gpu = _cuda.gpu_info(self.config.device_id)
            _cuda.set_device(self.config.device_id)
            wanted = Wanted({name: m.__version__ for name, m in flavours.items()}, self.gpu.sm,
                            self.config.precision, self.gpu.name)
            record = select_engine(self.artefact, self.manifest, wanted)
            plan = read_plan(self.artefact, self.manifest, record)
            self._device_note = device_model_note(record, self.gpu.name, self.artefact)
            if self._device_note:
                log.warning(self._device_note)
            self._load(flavours[record.key.flavour], record, plan)

    def open_plan(self, trt: Any, record: EngineRecord, plan: bytes) -> None:
        """Load a plan that is not (yet) in the store: the builder's check before installing it."""
        with self._lock:
            self.gpu = _cuda.gpu_info(self.config.device_id)
            _cuda.set_device(self.config.device_id)
            self._load(trt, record, plan, cache=False)

    def _load(self, trt: Any, record: EngineRecord, plan: bytes, cache: bool = True) -> None:
        runtime, engine = deserialize(trt, record, plan)
        io = self._io_dtypes(trt, engine)
        profiles = self._engine_profiles(engine)
        max_rows = max(p.max[0] for p in profiles)
        max_seq = max(p.max[1] for p in profiles)
        row_elems = {name: self._row_elems(engine, name, max_seq) for name in io if name not in INPUTS}
        self._trt, self._runtime, self._engine, self.record = trt, runtime, engine, record
        self._profiles = profiles
        self._runtime_config = self._make_runtime_config(engine, record) if cache else None
        try:
            for _ in range(max(1, min(MAX_CONTEXTS, len(profiles)))):
                context = (engine.create_execution_context(self._runtime_config) if self._runtime_config
                           else engine.create_execution_context())
                if context is None:
                    raise BackendError("TensorRT could not create an execution context (GPU memory?)")
                self._slots.append(_Slot(context, io, max_rows, max_seq, row_elems))
        except BaseException:
            self._free()
            raise
        self._pool = _Pool(list(self._slots), profiles)
        log.info("TensorRT engine %s on %s: %d profiles, %d contexts", record.key,
                 self.gpu.name if self.gpu else "?", len(profiles), len(self._slots))

    @staticmethod
    def _io_dtypes(trt: Any, engine: Any) -> dict[str, np.dtype[Any]]:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        missing = [n for n in (*INPUTS, *OUTPUTS) if n not in names]
        if missing:
            raise ArtefactError(f"the engine lacks tensors {missing}; rebuild it from this artefact")
        return {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}

    @staticmethod
    def _engine_profiles(engine: Any) -> tuple[ProfileShape, ...]:
        shapes = []
        for p in range(engine.num_optimization_profiles):
            lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(INPUTS[0], p))
            shapes.append(ProfileShape(lo, opt, hi))  # type: ignore[arg-type]
        return tuple(shapes)

    @staticmethod
    def _row_elems(engine: Any, name: str, max_seq: int) -> int:
        dims = [int(d) for d in engine.get_tensor_shape(name)][1:]  # [batch, ...]; a -1 past batch is sequence
        return int(np.prod([max_seq if d < 0 else d for d in dims])) if dims else 1

    def _make_runtime_config(self, engine: Any, record: EngineRecord) -> Any:
        """TensorRT-RTX compiles kernels when a context is created; its runtime cache keeps them."""
        config: Any = engine.create_runtime_config() if hasattr(engine, "create_runtime_config") else None
        if self.config.cuda_graphs:
            strategy = getattr(self._trt, "CudaGraphStrategy", None)
            if strategy is None or not hasattr(config, "cuda_graph_strategy"):
                raise BackendError(f"cuda_graphs needs TensorRT-RTX's graph capture; {record.key.flavour} "
                                   f"{record.key.trt_version} does not offer it (turn cuda_graphs off)")
            config.cuda_graph_strategy = strategy.WHOLE_GRAPH_CAPTURE
        if config is None:
            return None
        if not hasattr(config, "create_runtime_cache"):
            return config
        cache = config.create_runtime_cache()
        path = engine_dir(self.artefact, record.key) / RUNTIME_CACHE_NAME
        if path.is_file() and not cache.deserialize(path.read_bytes()):
            log.info("runtime cache %s is stale for this GPU/driver; it will be rebuilt", path)
        config.set_runtime_cache(cache)
        return config

    def _save_runtime_cache(self) -> None:
        config = self._runtime_config
        if config is None or self.record is None or not hasattr(config, "get_runtime_cache"):
            return
        path = engine_dir(self.artefact, self.record.key) / RUNTIME_CACHE_NAME
        try:
            data = bytes(config.get_runtime_cache().serialize())
            tmp = path.with_name(f".{path.name}.tmp-{id(self)}")
            tmp.write_bytes(data)
            tmp.replace(path)
        except Exception as exc:  # best effort: a read-only artefact just recompiles next time
            log.info("runtime cache not saved to %s: %s", path, exc)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._save_runtime_cache()
            self._free()

    def _free(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots, self._pool = [], None
        self._runtime_config = self._engine = self._runtime = None

    # -- running ---------------------------------------------------------------------------------

    def limits(self) -> ShapeLimits:
        if not self._profiles:
            raise BackendError("the TensorRT backend is not open; call open() first")
        max_seq = max(p.max[1] for p in self._profiles)
        edges = {p.max[1] for p in self._profiles}
        buckets = sorted({b for b in DEFAULT_SEQUENCE_BUCKETS if b <= max_seq} | edges)
        return ShapeLimits(max(p.max[0] for p in self._profiles), max_seq, tuple(buckets))

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        return next(self.run_many([batch]))

    def run_many(self, batches: Iterable[Batch]) -> Generator[dict[str, np.ndarray], None, None]:
        """Pipelined: batch i+1 is collated, copied in and enqueued on a second slot while batch i runs.

        At most one batch per free slot is in flight; when no slot (or no profile copy) is free the
        oldest batch is collected first, so one caller never waits on itself. Outputs come in order.
        """
        pool = self._pool
        if pool is None:
            raise BackendError("the TensorRT backend is not open; call open() first")
        if self.config.device_id:  # the current device is per host thread; callers run on many threads
            _cuda.set_device(self.config.device_id)
        inflight: deque[_Part] = deque()
        jobs: deque[_Job] = deque()
        try:
            for batch in batches:
                job = _Job(batch.shape, self._split(batch))
                jobs.append(job)
                for index, inputs in enumerate(job.inputs):
                    rows, seq = inputs["input_ids"].shape
                    got = pool.acquire(rows, seq, wait=False)
                    while got is None and inflight:  # everything usable is ours and busy: finish the oldest
                        self._collect(inflight.popleft(), pool)
                        got = pool.acquire(rows, seq, wait=False)
                    slot, profile = got or pool.acquire(rows, seq)  # type: ignore[misc]  # held by other threads
                    part = _Part(job, index, slot, profile)
                    try:
                        part.shapes = slot.submit(profile, inputs)
                    except BaseException:
                        self._abandon(part, pool)
                        raise
                    inflight.append(part)
                while jobs and jobs[0].done:
                    yield jobs.popleft().merged()
            while inflight:
                self._collect(inflight.popleft(), pool)
            while jobs:
                yield jobs.popleft().merged()
        except EmbedrtError:  # ours, or the caller's while collating a batch: a client error stays one
            raise
        except Exception as exc:  # CUDA / TensorRT binding errors
            raise BackendError(f"TensorRT failed on a batch of shape {jobs[-1].shape if jobs else '?'}: "
                               f"{exc}") from exc
        finally:  # an error, or a caller that stopped early: wait for what is queued, free the slots
            while inflight:
                self._abandon(inflight.popleft(), pool)

    def _split(self, batch: Batch) -> list[dict[str, np.ndarray]]:
        rows, seq = batch.shape
        cap = max((p.max[0] for p in self._profiles if p.min[1] <= seq <= p.max[1]), default=0)
        if not cap or rows < 1:
            raise InvalidInputError(f"no engine profile accepts sequence length {seq} "
                                    f"(limits: {self.limits().max_sequence} tokens)")
        # More rows than any profile takes at this length: split.
        return [{"input_ids": batch.input_ids[start:start + cap],
                 "attention_mask": batch.attention_mask[start:start + cap]} for start in range(0, rows, cap)]

    @staticmethod
    def _collect(part: _Part, pool: _Pool) -> None:
        try:
            part.job.outputs[part.index] = part.slot.collect(part.shapes)
        finally:
            pool.release(part.slot, part.profile)

    @staticmethod
    def _abandon(part: _Part, pool: _Pool) -> None:
        try:
            part.slot.stream.synchronize()  # its buffers may still be read or written by queued work
        except Exception as exc:
            log.warning("TensorRT stream did not synchronise while abandoning a batch: %s", exc)
        finally:
            pool.release(part.slot, part.profile)

    def describe(self) -> dict[str, str]:
        facts = {**super().describe(), "device": "cuda"}
        if self.record is not None:
            facts["engine_key"] = str(self.record.key)
            facts["profiles"] = ",".join(p.describe() for p in self._profiles)
            facts["contexts"] = str(len(self._slots))
        if self.gpu is not None:
            facts["gpu"] = f"{self.gpu.name} (sm{self.gpu.sm})"
        if self._device_note:
            facts["engine_warning"] = self._device_note
        return facts


__all__ = ["TensorRTBackend", "deserialize", "installed_flavours", "make_logger"]
