"""Loading a TensorRT engine: which flavour and plan, deserialising it, and what the engine takes.

The loader half of Polygraphy's loader / runner split. A *plan loader* answers "which plan runs on
this GPU": by default ``StoreLoader`` picks one from the artefact's engine store (``embedrt.engines``)
by compute capability, installed flavour / version and precision, and checks its bytes against
``engine.json`` and the manifest; the builder hands a fresh plan over with ``given_plan`` to check it
before installing it. Either way the backend gets a ``Plan`` and never reads the store itself.

Everything else here runs once per ``open``: the logger that keeps TensorRT's reason for a refused
plan, deserialisation, the engine's I/O and profiles (``EngineIO``), and TensorRT-RTX's runtime
config with its kernel cache. The TensorRT module arrives as an argument: nothing here imports it
at import time, only ``installed_flavours`` does, when a loader is called.
"""

from __future__ import annotations

import importlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import (
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
from ..errors import ArtefactError, BackendError
from ..manifest import Manifest
from .cuda import GpuInfo

log = logging.getLogger(__name__)


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


def deserialize(trt: Any, record: EngineRecord, plan: bytes | memoryview) -> tuple[Any, Any]:
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


# -- plan loaders ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A plan to run, with the TensorRT module that reads it and the record that says what it is."""

    trt: Any
    record: EngineRecord
    data: bytes | memoryview  # memoryview: a plan just built, not copied
    # Where TensorRT-RTX keeps the kernels it compiles for this GPU, between runs. None for a plan
    # outside the store (the builder's check): its contexts get TensorRT's defaults, no runtime config.
    runtime_cache: Path | None = None
    note: str | None = None  # a warning for the log and ``describe``: built on another GPU model


# (the GPU the backend runs on, the precision asked for) -> the plan to run there.
PlanLoader = Callable[[GpuInfo, str], Plan]


class StoreLoader:
    """The default plan loader: the artefact's engine for this GPU, flavour / version and precision."""

    def __init__(self, artefact: Path, manifest: Manifest) -> None:
        self.artefact = artefact
        self.manifest = manifest

    def __call__(self, gpu: GpuInfo, precision: str) -> Plan:
        flavours = installed_flavours()
        if not flavours:
            raise BackendError("no TensorRT flavour is installed: `pip install 'embedrt[tensorrt-rtx]'` "
                               "(RTX / workstation GPUs) or install datacenter TensorRT (`tensorrt`)")
        wanted = Wanted({name: m.__version__ for name, m in flavours.items()}, gpu.sm, precision, gpu.name)
        record = select_engine(self.artefact, self.manifest, wanted)
        data = read_plan(self.artefact, self.manifest, record)
        return Plan(flavours[record.key.flavour], record, data,
                    runtime_cache=engine_dir(self.artefact, record.key) / RUNTIME_CACHE_NAME,
                    note=device_model_note(record, gpu.name, self.artefact))


def given_plan(trt: Any, record: EngineRecord, data: bytes | memoryview) -> PlanLoader:
    """A loader for a plan that is not (yet) in the store: the builder's check before installing it."""

    def load(gpu: GpuInfo, precision: str) -> Plan:
        return Plan(trt, record, data)

    return load


# -- the engine's shapes and runtime config --------------------------------------------------------


@dataclass(frozen=True)
class EngineIO:
    """What the engine takes and gives: tensor dtypes, optimisation profiles, output row sizes."""

    dtypes: dict[str, np.dtype[Any]]  # every I/O tensor by name, as the engine binds it (int32 ids, say)
    profiles: tuple[ProfileShape, ...]
    row_elems: dict[str, int]  # output name -> elements per batch row at the longest sequence
    inputs: tuple[str, ...]  # the [rows, sequence] integer tensors fed (manifest.input_names); the rest are outputs

    @property
    def max_rows(self) -> int:
        return max(p.max[0] for p in self.profiles)

    @property
    def max_seq(self) -> int:
        return max(p.max[1] for p in self.profiles)


def engine_io(trt: Any, engine: Any, inputs: Sequence[str], outputs: Sequence[str]) -> EngineIO:
    """Read the engine's tensors and profiles; one lacking the manifest's ``inputs`` or ``outputs``
    (``manifest.input_names`` / ``output_names``) is an ArtefactError."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    missing = [n for n in (*inputs, *outputs) if n not in names]
    if missing:
        raise ArtefactError(f"the engine lacks tensors {missing}; rebuild it from this artefact")
    dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
    shapes = []
    for p in range(engine.num_optimization_profiles):
        lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(inputs[0], p))
        shapes.append(ProfileShape(lo, opt, hi))  # type: ignore[arg-type]
    profiles = tuple(shapes)
    max_seq = max(p.max[1] for p in profiles)
    row_elems = {}
    for name in names:
        if name in inputs:
            continue
        dims = [int(d) for d in engine.get_tensor_shape(name)][1:]  # [batch, ...]; a -1 past batch is sequence
        row_elems[name] = int(np.prod([max_seq if d < 0 else d for d in dims])) if dims else 1
    return EngineIO(dtypes, profiles, row_elems, tuple(inputs))


def runtime_config(trt: Any, engine: Any, record: EngineRecord, cuda_graphs: bool, cache_path: Path) -> Any:
    """TensorRT-RTX compiles kernels when a context is created; its runtime cache keeps them.

    None where this TensorRT has no runtime config (datacenter TensorRT 10); contexts then get the
    defaults. CUDA graphs are TensorRT-RTX's alone: asking for them elsewhere is a BackendError.
    """
    config: Any = engine.create_runtime_config() if hasattr(engine, "create_runtime_config") else None
    if cuda_graphs:
        strategy = getattr(trt, "CudaGraphStrategy", None)
        if strategy is None or not hasattr(config, "cuda_graph_strategy"):
            raise BackendError(f"cuda_graphs needs TensorRT-RTX's graph capture; {record.key.flavour} "
                               f"{record.key.trt_version} does not offer it (turn cuda_graphs off)")
        config.cuda_graph_strategy = strategy.WHOLE_GRAPH_CAPTURE
    if config is None:
        return None
    if not hasattr(config, "create_runtime_cache"):
        return config
    cache = config.create_runtime_cache()
    if cache_path.is_file() and not cache.deserialize(cache_path.read_bytes()):
        log.info("runtime cache %s is stale for this GPU/driver; it will be rebuilt", cache_path)
    config.set_runtime_cache(cache)
    return config


def save_runtime_cache(config: Any, path: Path) -> None:
    """Write the kernels compiled this run beside the plan, atomically; best effort."""
    if config is None or not hasattr(config, "get_runtime_cache"):
        return
    try:
        data = bytes(config.get_runtime_cache().serialize())
        tmp = path.with_name(f".{path.name}.tmp-{id(config)}")
        tmp.write_bytes(data)
        tmp.replace(path)
    except Exception as exc:  # a read-only artefact just recompiles next time
        log.info("runtime cache not saved to %s: %s", path, exc)


__all__ = ["EngineIO", "Plan", "PlanLoader", "StoreLoader", "deserialize", "engine_io",
           "given_plan", "installed_flavours", "make_logger", "runtime_config", "save_runtime_cache"]
