"""What a loaded model and its backend are, as typed values: ``Embedder.info()``, ``Reranker.info()`` and
``Backend.describe()``.

Transports map these onto their own messages (``InfoResponse``, the HTTP ``/info`` document, the
``embedrt embed`` JSON), so a renamed or missing field is a type error, not an empty string on the wire.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackendInfo:
    """The backend as it runs: which graph or engine, where, and any fallback it took and why."""

    backend: str  # "onnxruntime" | "tensorrt"
    precision: str  # the precision actually running
    device: str  # "cpu" | "cuda"
    graph: str = ""  # the ONNX file run (ONNX Runtime)
    attention: str = ""  # "fused" | "eager": the form of that graph
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, in order
    intra_op_threads: int | None = None  # None: the backend's default
    engine_key: str = ""  # the TensorRT engine in use
    profiles: tuple[str, ...] = ()  # its optimisation profiles, "min:opt:max" rows x sequence
    contexts: int = 0  # TensorRT execution contexts (concurrent batches)
    gpu: str = ""  # "NVIDIA H200 (sm90)"
    # Fallbacks and warnings, each a sentence: attention_fallback, cuda_graphs, engine_warning.
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """The model an ``Embedder`` serves and how: from its manifest, its backend and its batching."""

    name: str
    architecture: str
    dimensions: int  # full size; Matryoshka sizes are within ``dimensions_range``
    dimensions_range: tuple[int, int]
    max_length: int  # tokens per text, after the prompt
    pooling: str
    normalize: bool
    query_template: str
    default_instruction: str | None
    backend: BackendInfo
    max_batch_tokens: int
    max_batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RerankerInfo:
    """The reranker a ``Reranker`` serves and how: from its manifest, its backend and its batching."""

    name: str
    architecture: str
    max_length: int  # tokens per pair, prompt and special tokens included
    pair_encoding: str  # "template" (Qwen3-Reranker) | "text_pair" (cross-encoders)
    activation: str  # what the score is: "sigmoid" of the logit, or "none" (the logit itself)
    default_instruction: str | None
    padding_side: str
    backend: BackendInfo
    max_batch_tokens: int
    max_batch_size: int
    task: str = "rerank"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["BackendInfo", "ModelInfo", "RerankerInfo"]
