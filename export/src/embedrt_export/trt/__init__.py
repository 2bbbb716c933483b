"""TensorRT engines from artefacts: two flavours (``tensorrt``, ``tensorrt-rtx``) behind one builder.

``build_engines`` parses the artefact's ONNX graph of the chosen precision, builds one plan per
target compute capability with optimisation profiles from the runtime's batching buckets, checks
it against ONNX Runtime on a GPU when it can, and installs it atomically under
``ARTEFACT/engines/<flavour>-<trt version>-sm<cc>-<precision>/``.
"""

from __future__ import annotations

from .build import BuildOptions, build_engines, current_gpu, parse_network
from .flavours import BuilderFlavour, load_flavour, parse_targets
from .profiles import default_profiles, parse_profiles

__all__ = [
    "BuildOptions",
    "BuilderFlavour",
    "build_engines",
    "current_gpu",
    "default_profiles",
    "load_flavour",
    "parse_network",
    "parse_profiles",
    "parse_targets",
]
