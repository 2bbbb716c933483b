"""Flags -> option dataclasses, for all three commands in one place and built the same way.

Each function imports its stage's dataclass (a command loads only its own stage) and sets every
field by keyword from its flag. A flag that was not given takes the default from the dataclass
itself, so that no default is written twice.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..export.exporter import ExportOptions
    from ..quantize.pipeline import QuantizeOptions
    from ..trt import BuildOptions


def export_options(args: argparse.Namespace) -> ExportOptions:
    from ..export.exporter import ExportOptions

    return ExportOptions(
        dtypes=tuple(d for group in args.dtype for d in group) if args.dtype else ExportOptions.dtypes,
        max_length=args.max_length,
        opset=args.opset,
        name=args.name,
        with_hidden_states=args.with_hidden_states,
        revision=args.revision,
        overwrite=args.overwrite,
        attention=args.attention,
        task=args.task,
    )


def quantize_options(args: argparse.Namespace) -> QuantizeOptions:
    from ..quantize.pipeline import QuantizeOptions

    return QuantizeOptions(
        calibration=Path(args.calibration) if args.calibration else QuantizeOptions.calibration,
        method=args.method,
        smoothquant=args.smoothquant_alpha if args.smoothquant else None,
        exclude=tuple(args.exclude or ()),
        gate=args.gate,
        per_layer_sensitivity=args.per_layer_sensitivity,
        auto_exclude=not args.no_auto_exclude,
        max_auto_exclusions=args.max_auto_exclusions,
        cpu_variant=args.target in ("all", "cpu") and not args.no_cpu_variant,
        qdq_graph=args.target in ("all", "tensorrt"),
        cpu_weight_bits=args.cpu_weight_bits,
        per_tensor_tolerance=None if args.per_tensor_tolerance < 0 else args.per_tensor_tolerance,
        batch_size=args.batch_size,
    )


def build_options(args: argparse.Namespace) -> BuildOptions:
    from embedrt.config import BatchingConfig

    from ..trt import BuildOptions, parse_targets

    defaults = BatchingConfig()
    return BuildOptions(
        precisions=args.precision,
        targets=parse_targets(args.target),
        flavour=args.flavour,
        profiles=args.profiles,
        contexts=args.contexts,
        batching=BatchingConfig(max_batch_tokens=args.max_batch_tokens or defaults.max_batch_tokens,
                                max_batch_size=args.max_batch_size or defaults.max_batch_size),
        verify=not args.no_verify,
        int8_float=args.int8_float,
        attention=args.attention,
    )
