"""``embedrt build``: TensorRT engines for an artefact. Needs a TensorRT flavour."""

from __future__ import annotations

import argparse

from embedrt.config import BatchingConfig
from embedrt.engines import CONTEXTS
from embedrt.manifest import PRECISIONS


def _precisions(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in PRECISIONS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PRECISIONS)} (got {value!r})")
    return items


def _run(args: argparse.Namespace) -> int:
    from ..trt import build_engines
    from .options import build_options

    build_engines(args.artefact, build_options(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "build", help="build TensorRT engines for an artefact (per GPU, per precision)",
        description="Build TensorRT engines from the artefact's ONNX graph of each precision, one per target "
        "GPU, into ARTEFACT/engines/<flavour>-<trt version>-sm<cc>-<precision>/. On the GPU it targets, an "
        "engine is checked against ONNX Runtime FP32 and installed only if it passes.")
    p.add_argument("artefact", help="artefact directory written by `embedrt export`")
    p.add_argument("--precision", required=True, type=_precisions, metavar="fp32|fp16|int8[,..]",
                   help="graph(s) to build: fp16 from export, int8 from `embedrt quantize`")
    p.add_argument("--target", default="CURRENT", metavar="CURRENT|sm86,sm89,...",
                   help="compute capabilities to build for (default: the GPU here); tensorrt-rtx builds "
                   "any of sm75,sm80,sm86,sm89,sm120,sm121 without a GPU")
    p.add_argument("--flavour", choices=("tensorrt", "tensorrt-rtx"),
                   help="TensorRT flavour (default: tensorrt where installed, else tensorrt-rtx)")
    p.add_argument("--profiles", metavar="SPEC",
                   help="sequence edges (128,512,2048) or MIN:OPT:MAX shapes (1x1:8x64:64x128,...); "
                   "default: ranges of 4x in length up to the model's max_length, batch from the token budget")
    p.add_argument("--max-batch-tokens", type=int, help="token budget per batch the profiles are sized for "
                   f"(default {BatchingConfig().max_batch_tokens})")
    p.add_argument("--max-batch-size", type=int, help=f"rows per batch (default {BatchingConfig().max_batch_size})")
    p.add_argument("--contexts", type=int, default=CONTEXTS,
                   help="copies of each profile, so that many execution contexts run one length range at once "
                   f"(default {CONTEXTS}: the runtime pipelines batches on {CONTEXTS} contexts)")
    p.add_argument("--int8-float", choices=("fp16", "fp32"), default="fp16",
                   help="INT8 engines: precision of what is not quantized (default fp16: INT8 + FP16, the FP16 "
                   "graph's FP32 islands kept; fp32: the Q/DQ graph as quantized)")
    p.add_argument("--attention", choices=("auto", "fused", "eager"), default="auto",
                   help="graph to build from: auto (default: the artefact's default graph, fused where exported; "
                   "its eager twin where the flavour cannot parse the fused one), fused, or eager")
    p.add_argument("--no-verify", action="store_true", help="skip the GPU parity check (not recommended)")
    p.set_defaults(run=_run)


__all__ = ["register"]
