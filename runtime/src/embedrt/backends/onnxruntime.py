"""ONNX Runtime backend: CPU (always available) or the CUDA execution provider (onnxruntime-gpu).

``InferenceSession.run`` is thread-safe, so one session serves concurrent callers. On CUDA each run
uses its own I/O binding: inputs are copied to the device once and outputs are bound there, then
copied back in one step, instead of ORT staging them per call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..errors import ArtefactError, BackendError, InvalidInputError
from ..manifest import Manifest
from .base import Backend, Batch, ShapeLimits

OUTPUTS = ("sentence_embedding", "embedding_norm")
_CUDA = "CUDAExecutionProvider"


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


_preloaded = False


def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA / cuDNN from the nvidia-* pip packages (``onnxruntime-gpu[cuda,cudnn]``) once.

    Without it, onnxruntime-gpu finds them only on the system library path (or when torch happened
    to load them first), and the CUDA provider silently falls back to CPU. Harmless when the
    libraries come from the system instead.
    """
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()  # nvidia-* site packages first, then the default library path
    except Exception:  # best effort: session creation reports what is really missing
        pass


def cuda_available() -> bool:
    """True when the installed onnxruntime (onnxruntime-gpu) offers the CUDA execution provider."""
    return _CUDA in _ort().get_available_providers()


def choose_precision(manifest: Manifest, requested: str, device: str) -> str:
    """The graph key to load: the requested one, or for "auto" fp16 on CUDA (if present), else fp32."""
    if requested != "auto":
        manifest.graph(requested)  # raises ArtefactError naming what the artefact has
        return requested
    # ORT's CPU kernels for fp16 are few and slow; fp32 is both exact and faster there.
    preferred = ("fp16", "fp32") if device == "cuda" else ("fp32", "fp16")
    for key in preferred:
        if key in manifest.graphs:
            return key
    return manifest.graph("fp32").precision  # raises: no usable graph


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, artefact: Path, manifest: Manifest, config: BackendConfig) -> None:
        super().__init__(artefact, manifest, config)
        if config.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, got {config.device!r}")
        self._session: Any = None
        self._device = "cpu"
        self._precision: str | None = None
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        if self._precision is None:
            return choose_precision(self.manifest, self.config.precision, self._wanted_device())
        return self._precision

    @property
    def device(self) -> str:
        return self._device

    def _wanted_device(self) -> str:
        if self.config.device == "cuda":
            if not cuda_available():
                raise BackendError("device cuda asked for, but this onnxruntime has no CUDA provider; "
                                   "`pip install onnxruntime-gpu` (and remove onnxruntime) or use device cpu")
            return "cuda"
        if self.config.device == "cpu":
            return "cpu"
        return "cuda" if cuda_available() else "cpu"

    def _session_for(self, device: str, precision: str) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: shape-change warnings would flood serving logs
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            _preload_cuda_libraries(ort)
            providers.insert(0, (_CUDA, {"device_id": self.config.device_id}))
        path = self.artefact / self.manifest.graph(precision).file
        if not path.is_file():
            raise ArtefactError(f"{path} is missing; the artefact is incomplete, re-export the model")
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise BackendError(f"ONNX Runtime could not load {path.name}: {exc}") from exc

    def open(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            device = self._wanted_device()
            precision = choose_precision(self.manifest, self.config.precision, device)
            session = self._session_for(device, precision)
            if device == "cuda" and session.get_providers()[0] != _CUDA:
                # onnxruntime-gpu is installed but CUDA did not initialise; ORT fell back to CPU.
                if self.config.device == "cuda":
                    raise BackendError("the CUDA execution provider failed to initialise (see ORT's log); "
                                       "check the driver / CUDA libraries or use device cpu")
                device = "cpu"
                cpu_precision = choose_precision(self.manifest, self.config.precision, device)
                if cpu_precision != precision:
                    precision, session = cpu_precision, self._session_for(device, cpu_precision)
            names = {o.name for o in session.get_outputs()}
            missing = [n for n in OUTPUTS if n not in names]
            if missing:
                raise ArtefactError(f"graph {precision} lacks outputs {missing}; re-export with this embedrt")
            self._session, self._device, self._precision = session, device, precision

    def close(self) -> None:
        with self._lock:
            self._session = None

    def limits(self) -> ShapeLimits:
        return ShapeLimits()  # dynamic axes: any batch and sequence length

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise BackendError("the ONNX Runtime backend is not open; call open() first")
        try:
            if self._device == "cuda":
                values = self._run_bound(session, batch)
            else:
                values = session.run(list(OUTPUTS), {"input_ids": batch.input_ids,
                                                     "attention_mask": batch.attention_mask})
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on a batch of shape {batch.shape}: {exc}") from exc
        return dict(zip(OUTPUTS, values, strict=True))

    def _run_bound(self, session: Any, batch: Batch) -> list[np.ndarray]:
        binding = session.io_binding()  # one per call: bindings are not shared between threads
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(batch.input_ids))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(batch.attention_mask))
        for name in OUTPUTS:
            binding.bind_output(name, "cuda", self.config.device_id)
        session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def describe(self) -> dict[str, str]:
        facts = {**super().describe(), "device": self._device,
                 "graph": self.manifest.graph(self.precision).file,
                 "intra_op_threads": str(self.config.intra_op_threads or "default")}
        if self._session is not None:
            facts["providers"] = ",".join(self._session.get_providers())
        return facts


__all__ = ["OnnxRuntimeBackend", "choose_precision", "cuda_available"]
