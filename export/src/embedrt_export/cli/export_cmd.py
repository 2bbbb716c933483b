"""``embedrt export``: a Hugging Face embedding or reranker model -> a validated ONNX artefact."""

from __future__ import annotations

import argparse


def _dtypes(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _run(args: argparse.Namespace) -> int:
    from ..export.exporter import export_model
    from .options import export_options

    export_model(args.model, args.out, export_options(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export a Hugging Face embedding model to a validated ONNX artefact",
                       description="Export MODEL (a local directory or a hub id) to an artefact directory: "
                       "ONNX graphs with pooling and normalisation (or a reranker's score) inside, tokenizer files, "
                       "manifest.json and a parity report against the PyTorch model.")
    p.add_argument("model", help="local model directory or Hugging Face hub id")
    p.add_argument("--out", required=True, help="artefact directory to create")
    p.add_argument("--dtype", action="append", type=_dtypes, metavar="fp32|fp16[,..]",
                   help="graph precision(s) to write; repeat or comma-separate (default: fp32,fp16)")
    p.add_argument("--max-length", type=int, help="maximum tokens per text (default: the model's own)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset of the eager graph (default: 20; the fused "
                   "graph is always opset 23)")
    p.add_argument("--attention", choices=("auto", "fused", "eager", "both"), default="auto",
                   help="fused: opset-23 Attention / RMSNormalization / RotaryEmbedding (flash attention on "
                   "CUDA, fused TensorRT layers); eager: plain MatMul / Softmax; auto (default): fused as the "
                   "default graph plus its eager twin where the model family is covered (Qwen3), else eager; "
                   "both: as auto, failing where fused is not available")
    p.add_argument("--task", choices=("auto", "embed", "rerank"), default="auto",
                   help="what the model is exported as: embed (sentence embeddings) or rerank (a relevance score "
                   "per query-document pair: cross-encoders, Qwen3-Reranker); auto (default): a "
                   "*ForSequenceClassification checkpoint is a reranker, a *ForCausalLM one is a reranker when its "
                   "name says \"reranker\" and an embedder when it ships sentence-transformers files")
    p.add_argument("--name", help="model name recorded in the manifest (default: the directory name)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) when MODEL is a hub id")
    p.add_argument("--with-hidden-states", action="store_true", help="also output last_hidden_state")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run)


__all__ = ["register"]
