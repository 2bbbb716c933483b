"""ONNX Runtime backend: CPU (always available) or the CUDA execution provider (onnxruntime-gpu).

``InferenceSession.run`` is thread-safe, so one session serves concurrent callers. On CUDA each run
uses its own I/O binding: inputs are copied to the device once and outputs are bound there, then
copied back in one step, instead of ORT staging them per call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..errors import ArtefactError, BackendError, InvalidInputError
from ..info import BackendInfo
from ..manifest import GraphFile, Manifest
from .base import Backend, Batch, ShapeLimits
from .ort_cuda import CudaRunner

log = logging.getLogger(__name__)

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
    """The graph key to load: the requested one, or for "auto" fp16 on CUDA (if present), else fp32.

    "int8" on CPU means the artefact's CPU INT8 graph ("int8-cpu", u8s8 integer GEMMs) where it has
    one: the "int8" Q/DQ graph is made for TensorRT and runs at about FP32 speed on ONNX Runtime CPU.
    """
    if requested == "int8" and device == "cpu" and "int8-cpu" in manifest.graphs:
        return "int8-cpu"
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
        self._graph_file: GraphFile | None = None
        self._cuda: CudaRunner | None = None
        self._notes: dict[str, str] = {}  # what describe() reports: fallbacks and their reasons
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

    def _session_for(self, device: str, graph: GraphFile, cuda_graphs: bool = False) -> Any:
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
            cuda = {"device_id": self.config.device_id, **({"enable_cuda_graph": "1"} if cuda_graphs else {})}
            providers.insert(0, (_CUDA, cuda))
        path = self.artefact / graph.file
        if not path.is_file():
            raise ArtefactError(f"{path} is missing; the artefact is incomplete, re-export the model")
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise BackendError(f"ONNX Runtime could not load {path.name}: {exc}") from exc

    def _graph(self, precision: str) -> GraphFile:
        graph = self.manifest.graph(precision, self.config.attention)
        if graph.padding_side is not None and graph.padding_side != self.manifest.padding_side:
            raise ArtefactError(f"{graph.file} is exact only with {graph.padding_side} padding, but the manifest "
                                f"pads on the {self.manifest.padding_side}; re-export the model")
        return graph

    def _open_graph(self, device: str, precision: str) -> tuple[Any, GraphFile]:
        """A session for the precision's graph; a fused graph this ONNX Runtime cannot load (too old
        for opset 23, say) falls back to its eager twin unless the user asked for fused."""
        graph = self._graph(precision)
        try:
            return self._session_for(device, graph), graph
        except BackendError as exc:
            twin = self.manifest.eager_graphs.get(precision)
            if self.config.attention != "auto" or graph.attention != "fused" or twin is None:
                raise
            try:
                session = self._session_for(device, twin)
            except BackendError as twin_exc:
                raise BackendError(f"{exc}; its eager twin failed too: {twin_exc}") from twin_exc
            log.warning("%s; running its eager twin %s instead", exc, twin.file)
            self._notes["attention_fallback"] = str(exc)
            return session, twin

    def _open_cuda_graphs(self, graph: GraphFile) -> Any:
        """The CUDA session again with graph capture, or None (and the reason noted) if ORT refuses."""
        try:
            return self._session_for("cuda", graph, cuda_graphs=True)
        except BackendError as exc:  # e.g. Memcpy nodes in the partitioned graph
            self._notes["cuda_graphs"] = f"off: {exc}"
            log.warning("CUDA graphs not available for %s: %s", graph.file, exc)
            return None

    def open(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            device = self._wanted_device()
            precision = choose_precision(self.manifest, self.config.precision, device)
            session, graph = self._open_graph(device, precision)
            if device == "cuda" and session.get_providers()[0] != _CUDA:
                # onnxruntime-gpu is installed but CUDA did not initialise; ORT fell back to CPU.
                if self.config.device == "cuda":
                    raise BackendError("the CUDA execution provider failed to initialise (see ORT's log); "
                                       "check the driver / CUDA libraries or use device cpu")
                device = "cpu"
                cpu_precision = choose_precision(self.manifest, self.config.precision, device)
                if cpu_precision != precision:
                    precision = cpu_precision
                    session, graph = self._open_graph(device, cpu_precision)
            self._check_io(session, graph)
            runner = None
            if device == "cuda":
                captured = self._open_cuda_graphs(graph) if self.config.cuda_graphs else None
                if captured is not None:
                    session = captured
                    self._notes["cuda_graphs"] = f"on (shapes up to {self.config.cuda_graph_max_tokens} tokens)"
                runner = CudaRunner(_ort(), session, self.manifest, self.config.device_id, captured is not None,
                                    self.config.cuda_graph_max_tokens)
            self._session, self._device, self._precision = session, device, precision
            self._graph_file, self._cuda = graph, runner

    def _check_io(self, session: Any, graph: GraphFile) -> None:
        """The graph takes exactly the manifest's inputs and gives at least its outputs."""
        inputs = tuple(i.name for i in session.get_inputs())
        Batch.check_inputs(self.manifest.input_names)
        if set(inputs) != set(self.manifest.input_names):
            raise ArtefactError(f"{graph.file} takes inputs {list(inputs)}, the manifest says "
                                f"{list(self.manifest.input_names)}; re-export the model")
        outputs = {o.name for o in session.get_outputs()}
        missing = [n for n in self.manifest.output_names if n not in outputs]
        if missing:
            raise ArtefactError(f"{graph.file} lacks outputs {missing}; re-export with this embedrt")

    def close(self) -> None:
        with self._lock:
            self._session = None
            self._cuda = None

    def limits(self) -> ShapeLimits:
        return ShapeLimits()  # dynamic axes: any batch and sequence length

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        session, cuda = self._session, self._cuda
        if session is None:
            raise BackendError("the ONNX Runtime backend is not open; call open() first")
        names = self.manifest.output_names
        try:
            if cuda is not None:
                return cuda.run(batch)
            values = session.run(list(names), batch.feed(self.manifest.input_names))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on a batch of shape {batch.shape}: {exc}") from exc
        return dict(zip(names, values, strict=True))

    def describe(self) -> BackendInfo:
        graph = self._graph_file or self.manifest.graph(self.precision, self.config.attention)
        providers = tuple(self._session.get_providers()) if self._session is not None else ()
        return replace(super().describe(), graph=graph.file, attention=graph.attention, providers=providers,
                       intra_op_threads=self.config.intra_op_threads or None, notes=dict(self._notes))


__all__ = ["OnnxRuntimeBackend", "choose_precision", "cuda_available"]
