"""embedrt-export: Hugging Face embedding checkpoints -> ONNX artefacts (and, later, engines)."""

from __future__ import annotations

from .errors import ExportError, ParityError, SourceNotFoundError
from .exporter import ExportOptions, export_model

__all__ = ["ExportError", "ExportOptions", "ParityError", "SourceNotFoundError", "export_model"]
