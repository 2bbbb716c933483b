"""``embedrt quantize``: add a calibrated INT8 graph to an artefact (needs the export stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .export_stage import load_export_stage


def _run(args: argparse.Namespace) -> int:
    load_export_stage()  # a clear install hint when embedrt_export (or torch / onnx) is missing
    from embedrt_export.quantize import QuantizeOptions, quantize_artefact

    options = QuantizeOptions(
        calibration=Path(args.calibration) if args.calibration else None,
        method=args.method,
        smoothquant=args.smoothquant_alpha if args.smoothquant else None,
        exclude=tuple(args.exclude or ()),
        gate=args.gate,
        per_layer_sensitivity=args.per_layer_sensitivity,
        auto_exclude=not args.no_auto_exclude,
        max_auto_exclusions=args.max_auto_exclusions,
        cpu_variant=not args.no_cpu_variant,
        batch_size=args.batch_size,
    )
    quantize_artefact(args.artefact, options)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "quantize", help="add a calibrated INT8 (Q/DQ) graph to an artefact, behind a quality gate",
        description="Calibrate and quantize the artefact's FP32 graph to INT8 Q/DQ (symmetric, zero points 0: "
        "TensorRT-ready, also runs on ONNX Runtime CPU), check it against FP32 on held-out texts and add it "
        "to the manifest. Below the gate it first searches for layer groups to keep float (most harmful first, "
        "re-gating after each; see --no-auto-exclude); if none passes, nothing changes and the command exits "
        "non-zero. Where ONNX "
        "Runtime's dynamic INT8 is faster on CPU and passes the same gate, it is added too (int8-cpu).")
    p.add_argument("artefact", help="artefact directory written by `embedrt export`")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration texts: .txt (one per line) or .jsonl ({\"text\", \"kind\": query|document, "
                   "\"task\"}); default: the set shipped with embedrt-export")
    p.add_argument("--method", choices=("entropy", "max", "percentile"), default="max",
                   help="activation range calibration (default: max)")
    p.add_argument("--smoothquant", action="store_true",
                   help="migrate activation outliers into the weights before quantizing (SmoothQuant)")
    p.add_argument("--smoothquant-alpha", type=float, default=0.5, help="SmoothQuant migration strength (0.5)")
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="keep matching MatMul/Gemm nodes in float (fnmatch on node name, module path such as "
                   "'model.layers.0.*' or '*.mlp.down_proj', or module class such as BertOutput); repeatable")
    p.add_argument("--gate", type=float, default=0.99, help="minimum mean cosine against FP32 (default 0.99)")
    p.add_argument("--per-layer-sensitivity", action="store_true",
                   help="also quantize one layer group at a time and report each one's cosine")
    p.add_argument("--no-auto-exclude", action="store_true",
                   help="below the gate, fail at once instead of searching for layer groups to keep float "
                   "(by default: measure each role, then each layer, alone in INT8 and keep the worst float "
                   "one at a time until the gate passes; recorded in the manifest)")
    p.add_argument("--max-auto-exclusions", type=int, default=4, metavar="N",
                   help="most layer groups the automatic search may keep float (default 4)")
    p.add_argument("--no-cpu-variant", action="store_true", help="do not try ONNX Runtime dynamic INT8 (int8-cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.set_defaults(run=_run)
