"""``embedrt embed``: embed texts from the command line or a file with the lean runtime."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..errors import InvalidInputError
from ..info import ModelInfo

CHUNK = 256  # texts per call: bounds memory and drives the progress bar
PROGRESS_OVER = 300  # a progress bar only when a file has more lines than this


def _lines(data: bytes, source: str) -> list[str]:
    """Lines split on LF only (CRLF too): U+2028, U+0085 or a form feed inside a text stay in it."""
    try:
        text = data.decode("utf-8-sig")  # a leading BOM is an encoding mark, not text
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(f"{source}:{line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                                "convert the file to UTF-8") from exc
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_texts(path: Path | None, kind: str | None = None) -> list[str]:
    """One text per line (txt), or one JSON object with a "text" field per line (jsonl).

    ``path`` None reads standard input; ``kind`` None picks by suffix (.jsonl, else txt).
    """
    source = str(path) if path is not None else "<stdin>"
    try:
        data = sys.stdin.buffer.read() if path is None else path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc.strerror or exc}") from exc
    lines = _lines(data, source)
    if (kind or ("jsonl" if path is not None and path.suffix == ".jsonl" else "txt")) == "txt":
        return lines
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{source}:{number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidInputError(f'{source}:{number} needs a "text" field holding a string')
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


class _Output:
    """``--output``, opened before any work: a temporary sibling, renamed over the path at the end.

    Opening it first turns a missing directory or an unwritable place into an error before the model
    loads; the rename means a failed or interrupted run leaves an existing file as it was.
    """

    def __init__(self, path: Path) -> None:
        if path.suffix not in (".npy", ".jsonl"):
            raise InvalidInputError(f"--output must end in .npy or .jsonl, got {path.name}")
        if path.is_dir():
            raise InvalidInputError(f"cannot write --output {path}: it is a directory")
        self.path = path
        self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self._file = self._tmp.open("wb")
        except FileNotFoundError as exc:
            raise InvalidInputError(f"cannot write --output {path}: directory {path.parent} does not exist") from exc
        except OSError as exc:
            raise InvalidInputError(f"cannot write --output {path}: {exc.strerror or exc}") from exc

    def write(self, vectors: np.ndarray) -> None:
        if self.path.suffix == ".npy":
            np.save(self._file, vectors)
        else:
            for i, row in enumerate(vectors):
                self._file.write((json.dumps({"index": i, "embedding": row.tolist()}) + "\n").encode())
        self._file.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _embed_all(args: argparse.Namespace, texts: list[str]) -> tuple[np.ndarray, ModelInfo]:
    from ..embedder import Embedder

    options = {"dimensions": args.dimensions}
    config = BackendConfig(attention=args.attention)
    with Embedder.load(args.artefact, args.backend, precision=args.precision, backend_config=config) as embedder:
        parts = []
        with _progress(len(texts)) as bar:
            for chunk in _chunks(texts):
                if args.query or args.instruction is not None:
                    parts.append(embedder.embed_queries(chunk, args.instruction, **options))
                else:
                    parts.append(embedder.embed_documents(chunk, **options))
                if bar is not None:
                    bar.update(len(chunk))
        return np.concatenate(parts), embedder.info()


def _run(args: argparse.Namespace) -> int:
    texts = list(args.texts)
    if args.input:
        texts += read_texts(None if args.input == "-" else Path(args.input), args.input_format)
    if not texts:
        raise InvalidInputError("nothing to embed: give TEXT arguments or --input FILE (- for standard input)")
    output = _Output(Path(args.output)) if args.output else None  # before any work: fail early
    try:
        vectors, info = _embed_all(args, texts)
        if output is not None:
            output.write(vectors)
    except BaseException:
        if output is not None:
            output.discard()
        raise
    if output is not None:
        print(f"wrote {len(vectors)} x {vectors.shape[1]} embeddings to {args.output}", file=sys.stderr)
        return 0
    json.dump({"model": info.name, "backend": info.backend.backend, "precision": info.backend.precision,
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
    p.add_argument("--input", metavar="FILE", help="texts, one per line (split on LF or CRLF only), or JSON lines "
                   "with a text field (.jsonl); - reads standard input; UTF-8")
    p.add_argument("--input-format", choices=("txt", "jsonl"),
                   help="how to read --input (default: jsonl for a .jsonl file, else txt)")
    p.add_argument("--output", metavar="FILE", help="write .npy (float32 [n, d]) or .jsonl instead of stdout")
    p.add_argument("--query", action="store_true", help="embed as queries with the model's default instruction")
    p.add_argument("--instruction", "--query-task", metavar="TEXT",
                   help="embed as queries with this instruction (instruction-tuned models; --query-task is an "
                   "older name)")
    p.add_argument("--dimensions", type=int, help="Matryoshka: truncate to N dimensions and renormalise")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--precision", default="auto", help="graph to run: auto, fp32, fp16, int8 ... (default: auto)")
    p.add_argument("--attention", default="auto", choices=("auto", "fused", "eager"),
                   help="graph form: the artefact's default (auto), fused, or its eager twin")
    p.set_defaults(run=_run)
