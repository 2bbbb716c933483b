"""embedrt: serve sentence embeddings and reranker scores from exported ONNX / TensorRT artefacts, without PyTorch."""

from __future__ import annotations

from .config import BackendConfig, BatchingConfig
from .embedder import Embedder
from .errors import (
    ArtefactError,
    BackendError,
    DeadlineExceededError,
    EmbedrtError,
    EngineMismatchError,
    InputTooLongError,
    InvalidFieldError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from .manifest import Manifest, load_manifest
from .prompts import Prompts
from .reranker import Reranker
from .scoring import RerankResult
from .tokenizer import Encoded

__version__ = "0.1.0"

__all__ = [
    "ArtefactError",
    "BackendConfig",
    "BackendError",
    "BatchingConfig",
    "DeadlineExceededError",
    "Embedder",
    "EmbedrtError",
    "Encoded",
    "EngineMismatchError",
    "InputTooLongError",
    "InvalidFieldError",
    "InvalidInputError",
    "Manifest",
    "OverloadedError",
    "Prompts",
    "RerankResult",
    "Reranker",
    "UnavailableError",
    "__version__",
    "load_manifest",
]
