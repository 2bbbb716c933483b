"""embedrt-export: Hugging Face embedding checkpoints -> ONNX artefacts, INT8 graphs and TensorRT engines.

One subpackage per stage, as the ``embedrt`` commands run them: ``export`` (checkpoint -> validated
ONNX artefact), ``quantize`` (INT8 graphs behind a quality gate), ``trt`` (engines). ``graph`` and
``fp16`` are shared by them; ``cli`` registers the commands with ``embedrt``; ``testing`` builds small
random checkpoints for tests, the demo and the benchmarks.

The stages are imported when first used, not here: ``embedrt`` loads this package's command
registration (``cli``) every time it starts, and that must not cost it torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ExportError, ParityError, QuantizationError, SourceNotFoundError

if TYPE_CHECKING:
    from .export.exporter import ExportOptions, export_model
    from .quantize.pipeline import QuantizeOptions, quantize_artefact

_LAZY = {
    "ExportOptions": "export.exporter",
    "export_model": "export.exporter",
    "QuantizeOptions": "quantize.pipeline",
    "quantize_artefact": "quantize.pipeline",
}

__all__ = [
    "ExportError",
    "ExportOptions",
    "ParityError",
    "QuantizationError",
    "QuantizeOptions",
    "SourceNotFoundError",
    "export_model",
    "quantize_artefact",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
