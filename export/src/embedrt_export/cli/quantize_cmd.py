"""``embedrt quantize``: add calibrated INT8 graphs to an artefact, behind a quality gate."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from ..quantize.pipeline import quantize_artefact
    from .options import quantize_options

    quantize_artefact(args.artefact, quantize_options(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "quantize", help="add INT8 graphs to an artefact (Q/DQ for TensorRT, u8s8 for CPU), behind a quality gate",
        description="Quantize the artefact's FP32 graph to INT8, twice: a calibrated Q/DQ graph (symmetric, zero "
        "points 0: what TensorRT builds from; key int8) and a CPU graph for ONNX Runtime's fast u8s8 integer "
        "kernels with per-token activation scales (key int8-cpu; precision=int8 on CPU loads it). Each is checked "
        "against FP32 on held-out data and added to the manifest: an embedding model's by the cosine of its "
        "embeddings of held-out texts, a reranker's by the rankings it gives held-out query-document lists "
        "(Spearman, top-3 agreement, score and logit differences). Below the gate it first searches for layer "
        "groups to keep float (most harmful first, re-gating after each; see --no-auto-exclude); if a graph still "
        "misses, nothing changes and the command exits non-zero.")
    p.add_argument("artefact", help="artefact directory written by `embedrt export`")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration texts: .txt (one per line) or .jsonl ({\"text\", \"kind\": query|document, "
                   "\"instruction\"}); for a reranker, query lists: .jsonl ({\"query\", \"documents\": [...], "
                   "\"instruction\"}); default: the sets shipped with embedrt-export")
    p.add_argument("--method", choices=("entropy", "max", "percentile"), default="max",
                   help="activation range calibration (default: max)")
    p.add_argument("--smoothquant", action="store_true",
                   help="migrate activation outliers into the weights before quantizing (SmoothQuant)")
    p.add_argument("--smoothquant-alpha", type=float, default=0.5, help="SmoothQuant migration strength (0.5)")
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="keep matching MatMul/Gemm nodes in float (fnmatch on node name, module path such as "
                   "'model.layers.0.*' or '*.mlp.down_proj', or module class such as BertOutput); repeatable")
    p.add_argument("--gate", type=float, default=None,
                   help="minimum of the task's gated metric against FP32: for an embedding model mean cosine over "
                   "held-out texts (default 0.99), for a reranker mean Spearman rho of held-out query lists' "
                   "rankings (default 0.95)")
    p.add_argument("--per-layer-sensitivity", action="store_true",
                   help="also quantize one layer group at a time and report each one's gated metric")
    p.add_argument("--no-auto-exclude", action="store_true",
                   help="below the gate, fail at once instead of searching for layer groups to keep float "
                   "(by default: measure each role, then each layer, alone in INT8 and keep the worst float "
                   "one at a time until the gate passes; recorded in the manifest)")
    p.add_argument("--max-auto-exclusions", type=int, default=4, metavar="N",
                   help="most layer groups the automatic search may keep float (default 4)")
    p.add_argument("--target", choices=("all", "tensorrt", "cpu"), default="all",
                   help="which INT8 graphs to build: all (default), tensorrt (the Q/DQ graph, key int8) or cpu "
                   "(the u8s8 graph, key int8-cpu); the other one, if the artefact has it, is kept")
    p.add_argument("--no-cpu-variant", action="store_true", help="same as --target tensorrt")
    p.add_argument("--cpu-weight-bits", type=int, choices=(7, 8), default=7,
                   help="CPU graph weight range: 7 (default) can never saturate the AVX2 / AVX-512 u8s8 kernels, so "
                   "the gate holds on every x86 CPU; 8 is finer, exact only on VNNI / AMX CPUs")
    p.add_argument("--per-tensor-tolerance", type=float, default=0.0005, metavar="DELTA",
                   help="CPU graph: layers fed by a norm get one activation scale per tensor (a fused, faster "
                   "kernel) where that lowers the gated metric (mean cosine; a reranker's mean Spearman) by at most "
                   "this much against every layer per token (default 0.0005; negative: every layer per token)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.set_defaults(run=_run)


__all__ = ["register"]
