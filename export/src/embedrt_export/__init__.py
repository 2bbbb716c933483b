"""embedrt-export: Hugging Face embedding checkpoints -> ONNX artefacts, INT8 graphs and TensorRT engines.

One subpackage per stage, as the ``embedrt`` commands run them: ``export`` (checkpoint -> validated
ONNX artefact), ``quantize`` (INT8 graphs behind a quality gate), ``trt`` (engines). ``graph`` and
``fp16`` are shared by them; ``testing`` builds small random checkpoints for tests, the demo and the
benchmarks.
"""

from __future__ import annotations

from .errors import ExportError, ParityError, QuantizationError, SourceNotFoundError
from .export.exporter import ExportOptions, export_model
from .quantize.pipeline import QuantizeOptions, quantize_artefact

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
