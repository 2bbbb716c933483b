"""TensorRT backend: runs the artefact's engine for this GPU, with its own CUDA buffers and no torch.

The runner half of Polygraphy's loader / runner split, assembled from three parts:

- ``trt_loader``: a plan loader says which plan runs here (by default the artefact's engine store,
  by GPU compute capability, TensorRT flavour / version and precision, checked against
  ``engine.json`` and the manifest); it is deserialised, read for its I/O and profiles, and given
  TensorRT-RTX's runtime cache;
- ``trt_slots``: execution contexts ("slots"), each with a stream, device buffers and pinned host
  staging allocated once, handed out with a free optimisation profile by a pool;
- ``pipeline``: ``run_many`` enqueues the next batch on another slot before the current one is
  waited for.

The builder checks a fresh plan through this same backend by handing it ``given_plan(...)`` as its
loader. ``tensorrt`` / ``tensorrt_rtx_bindings`` and cuda-python are imported in ``open``, never at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_SEQUENCE_BUCKETS, BackendConfig
from ..engines import CONTEXTS, EngineRecord, ProfileShape
from ..errors import BackendError
from ..info import BackendInfo
from ..manifest import Manifest
from . import cuda
from .base import Backend, Batch, ShapeLimits
from .pipeline import pipelined
from .trt_loader import Plan, PlanLoader, StoreLoader, deserialize, engine_io, runtime_config, save_runtime_cache
from .trt_slots import Pool, Slot, open_slots

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artefact: Path, manifest: Manifest, config: BackendConfig,
                 loader: PlanLoader | None = None) -> None:
        super().__init__(artefact, manifest, config)
        self._loader = loader or StoreLoader(self.artefact, manifest)
        self.record: EngineRecord | None = None
        self.gpu: cuda.GpuInfo | None = None
        self._plan: Plan | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._runtime_config: Any = None
        self._slots: list[Slot] = []
        self._pool: Pool | None = None
        self._profiles: tuple[ProfileShape, ...] = ()
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
            self.gpu = cuda.gpu_info(self.config.device_id)
            cuda.set_device(self.config.device_id)
            plan = self._loader(self.gpu, self.config.precision)
            if plan.note:
                log.warning(plan.note)
            self._plan = plan
            self._load(plan)

    def _load(self, plan: Plan) -> None:
        runtime, engine = deserialize(plan.trt, plan.record, plan.data)
        io = engine_io(plan.trt, engine, self.manifest.input_names, self.manifest.output_names)
        self._runtime, self._engine, self.record = runtime, engine, plan.record
        self._profiles = io.profiles
        # At most one context per profile (two runs never share a profile). Each context holds
        # activation memory for the largest profile; two let one batch's copies overlap another's compute.
        count = max(1, min(CONTEXTS, len(io.profiles)))
        try:
            if plan.runtime_cache is not None:
                self._runtime_config = runtime_config(plan.trt, engine, plan.record, self.config.cuda_graphs,
                                                      plan.runtime_cache)
            self._slots = open_slots(engine, io, count, self._runtime_config)
        except BaseException:
            self._free()
            raise
        self._pool = Pool(list(self._slots), io.profiles)
        log.info("TensorRT engine %s on %s: %d profiles, %d contexts", plan.record.key,
                 self.gpu.name if self.gpu else "?", len(io.profiles), len(self._slots))

    def close(self) -> None:
        with self._lock:
            if self._engine is not None and self._plan is not None and self._plan.runtime_cache is not None:
                save_runtime_cache(self._runtime_config, self._plan.runtime_cache)
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
        """Pipelined (``pipeline.pipelined``): batch i+1 is collated, copied in and enqueued on a
        second slot while batch i runs. Outputs come in order."""
        pool = self._pool
        if pool is None:
            raise BackendError("the TensorRT backend is not open; call open() first")
        if self.config.device_id:  # the current device is per host thread; callers run on many threads
            cuda.set_device(self.config.device_id)
        yield from pipelined(batches, pool, self._profiles, input_names=self.manifest.input_names)

    @property
    def device(self) -> str:
        return "cuda"

    def describe(self) -> BackendInfo:
        info = super().describe()
        if self.record is not None:
            info = replace(info, engine_key=str(self.record.key), profiles=tuple(p.describe() for p in self._profiles),
                           contexts=len(self._slots))
        if self.gpu is not None:
            info = replace(info, gpu=f"{self.gpu.name} (sm{self.gpu.sm})")
        if self._plan is not None and self._plan.note:
            info = replace(info, notes={"engine_warning": self._plan.note})
        return info


__all__ = ["TensorRTBackend"]
