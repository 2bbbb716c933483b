"""Inference backends behind one small interface, picked by name and imported lazily.

A backend only ever sees a ``Batch`` (token ids, mask, lengths). Tokenizing, prompts, truncation,
sorting and bucketing happen before it; pooling tails (Matryoshka, renormalisation) after it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..config import BackendConfig
from ..errors import InvalidInputError
from ..manifest import Manifest
from .base import Backend, Batch, ShapeLimits

# name -> "module:Class", imported only when asked for.
_REGISTRY = {
    "onnxruntime": "embedrt.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "embedrt.backends.tensorrt:TensorRTBackend",
}


def create_backend(name: str, artefact: Path, manifest: Manifest, config: BackendConfig) -> Backend:
    """Instantiate (but do not open) the backend called ``name``."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(artefact, manifest, config)  # type: ignore[no-any-return]


__all__ = ["Backend", "Batch", "ShapeLimits", "create_backend"]
