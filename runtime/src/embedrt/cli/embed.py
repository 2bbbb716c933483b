"""``embedrt embed``: embed texts from the command line or a file with the lean runtime."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..errors import InvalidInputError

CHUNK = 256  # texts per call: bounds memory and drives the progress bar
PROGRESS_OVER = 300  # a progress bar only when a file has more lines than this


def read_texts(path: Path) -> list[str]:
    """One text per line (.txt), or one JSON object with a "text" field per line (.jsonl)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidInputError(f'{path}:{number} needs a "text" field holding a string')
        texts.append(record["text"])
    return texts


def _chunks(texts: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(texts), CHUNK):
        yield texts[start : start + CHUNK]


def _progress(total: int) -> Any:
    """tqdm when it is installed and the input is large; it is optional at run time."""
    if total <= PROGRESS_OVER:
        return nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return nullcontext(None)
    return tqdm(total=total, unit="text", file=sys.stderr)


def write_vectors(path: Path, vectors: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, vectors)
        return
    if path.suffix != ".jsonl":
        raise InvalidInputError(f"--output must end in .npy or .jsonl, got {path.name}")
    with path.open("w", encoding="utf-8") as out:
        for i, row in enumerate(vectors):
            out.write(json.dumps({"index": i, "embedding": row.tolist()}) + "\n")


def _run(args: argparse.Namespace) -> int:
    from ..embedder import Embedder

    texts = list(args.texts)
    if args.input:
        texts += read_texts(Path(args.input))
    if not texts:
        raise InvalidInputError("nothing to embed: give TEXT arguments or --input FILE")
    if args.output and Path(args.output).suffix not in (".npy", ".jsonl"):
        raise InvalidInputError(f"--output must end in .npy or .jsonl, got {args.output}")
    options = {"dimensions": args.dimensions}
    config = BackendConfig(attention=args.attention)
    with Embedder.load(args.artefact, args.backend, precision=args.precision, backend_config=config) as embedder:
        parts = []
        with _progress(len(texts)) as bar:
            for chunk in _chunks(texts):
                if args.query or args.query_task:
                    parts.append(embedder.embed_queries(chunk, args.query_task, **options))
                else:
                    parts.append(embedder.embed_documents(chunk, **options))
                if bar is not None:
                    bar.update(len(chunk))
        vectors = np.concatenate(parts)
        if args.output:
            write_vectors(Path(args.output), vectors)
            print(f"wrote {len(vectors)} x {vectors.shape[1]} embeddings to {args.output}", file=sys.stderr)
            return 0
        info = embedder.info()
        json.dump({"model": info["name"], "backend": info["backend"], "precision": info["precision"],
                   "dimensions": int(vectors.shape[1]),
                   "data": [{"index": i, "embedding": row.tolist()} for i, row in enumerate(vectors)]},
                  sys.stdout)
        sys.stdout.write("\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("embed", help="embed texts with an exported artefact (no PyTorch)",
                       description="Embed TEXT arguments and/or the lines of --input. Without --output the "
                       "vectors are printed as one JSON document.")
    p.add_argument("artefact", help="artefact directory written by `embedrt export`")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--input", metavar="FILE", help="texts, one per line (.txt) or JSON lines with a text field")
    p.add_argument("--output", metavar="FILE", help="write .npy (float32 [n, d]) or .jsonl instead of stdout")
    p.add_argument("--query", action="store_true", help="embed as queries with the model's default task")
    p.add_argument("--query-task", metavar="TASK", help="embed as queries with this task (instruction models)")
    p.add_argument("--dimensions", type=int, help="Matryoshka: truncate to N dimensions and renormalise")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--precision", default="auto", help="graph to run: auto, fp32, fp16, int8 ... (default: auto)")
    p.add_argument("--attention", default="auto", choices=("auto", "fused", "eager"),
                   help="graph form: the artefact's default (auto), fused, or its eager twin")
    p.set_defaults(run=_run)
