"""embedrt: serve pooled sentence embeddings from exported ONNX / TensorRT artefacts, without PyTorch."""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "ArtefactError",
    "BackendError",
    "EmbedrtError",
    "EngineMismatchError",
    "InputTooLongError",
    "InvalidInputError",
    "Manifest",
    "OverloadedError",
    "UnavailableError",
    "__version__",
    "load_manifest",
]
