"""embedrt: serve pooled sentence embeddings from exported ONNX / TensorRT artefacts, without PyTorch."""

from __future__ import annotations

from .config import BackendConfig, BatchingConfig
from .embedder import Embedder
from .errors import (
    ArtefactError,
    BackendError,
    EmbedrtError,
    EngineMismatchError,
    InputTooLongError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from .manifest import Manifest, load_manifest
from .tokenizer import Encoded

__version__ = "0.1.0"

__all__ = [
    "ArtefactError",
    "BackendConfig",
    "BackendError",
    "BatchingConfig",
    "Embedder",
    "EmbedrtError",
    "Encoded",
    "EngineMismatchError",
    "InputTooLongError",
    "InvalidInputError",
    "Manifest",
    "OverloadedError",
    "UnavailableError",
    "__version__",
    "load_manifest",
]
