"""``embedrt embed``: embed texts from the command line or files with the lean runtime.

Small jobs (TEXT arguments, ``--output x.npy`` / ``.jsonl``, JSON on stdout) are read and embedded in
memory here; ``--output DIR/`` hands the inputs to the streaming, resumable bulk job (``embedrt.bulk``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..errors import InvalidInputError
from ..info import ModelInfo

CHUNK = 256  # texts per call: bounds memory and drives the progress bar
PROGRESS_OVER = 300  # a progress bar only when a file has more lines than this


def read_texts(patterns: Sequence[str], kind: str | None = None, column: str = "text") -> list[str]:
    """The texts of every input in memory (the small-job path; ``--output DIR/`` streams instead): the
    first bad row stops with its file and line. ``kind`` None picks by suffix; "-" is standard input."""
    from ..bulk import readers
    from ..bulk.inputs import Input, resolve

    texts, columns = [], readers.Columns(column)
    for path, fmt in resolve(patterns, kind):
        source = Input(path, fmt)
        readers.check(source, columns)
        for row in readers.read(source, columns):
            if row.problem is not None:
                raise InvalidInputError(str(row.problem))
            texts.append(row.text)
    return texts


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
            raise InvalidInputError(f"--output must end in .npy or .jsonl, or name a directory of shards (end it "
                                    f"with /), got {path.name}")
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

    prompt = "query" if args.query or args.instruction is not None else "document"
    config = BackendConfig(attention=args.attention)
    with Embedder.load(args.artefact, args.backend, precision=args.precision, backend_config=config) as embedder:
        parts = []
        with _progress(len(texts)) as bar:
            for block in embedder.embed_iter(texts, prompt=prompt, instruction=args.instruction,
                                             dimensions=args.dimensions, window=CHUNK):
                parts.append(block)
                if bar is not None:
                    bar.update(len(block))
        return np.concatenate(parts), embedder.info()


def _is_directory(output: str) -> bool:
    """``--output`` names a directory of shards: it ends with a separator, or is an existing directory
    not named like a file this command writes (``x.npy/`` is refused as before)."""
    if output.endswith(("/", os.sep)):
        return True
    return Path(output).is_dir() and Path(output).suffix not in (".npy", ".jsonl")


def _run(args: argparse.Namespace) -> int:
    if args.output and _is_directory(args.output):
        return _run_corpus(args)
    corpus_only = [flag for flag, value in (("--id-column", args.id_column), ("--shard-size", args.shard_size),
                                            ("--on-error", args.on_error), ("--overwrite", args.overwrite or None),
                                            ("--ray", args.ray), ("--devices", args.devices),
                                            ("--workers", args.workers), *_ray_flags(args)) if value is not None]
    if corpus_only:
        raise InvalidInputError(f"{', '.join(corpus_only)} go with --output DIR/ (Parquet shards); "
                                "end --output with / to write a directory")
    texts = list(args.texts)
    if args.input:
        texts += read_texts(args.input, args.input_format, args.text_column)
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


def _ray_flags(args: argparse.Namespace) -> list[tuple[str, Any]]:
    return [("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor),
            ("--gpus-per-actor", args.gpus_per_actor)]


def _ray_options(args: argparse.Namespace) -> Any:
    """``RayOptions`` for ``--ray [ADDRESS]``, None without it; the actor flags go with it only."""
    from ..bulk import RayOptions

    if args.ray is None:
        given = [flag for flag, value in _ray_flags(args) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} go with --ray")
        return None
    return RayOptions(address=args.ray or None, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                      cpus_per_actor=args.cpus_per_actor)


def _run_corpus(args: argparse.Namespace) -> int:
    from ..bulk import SHARD_SIZE, BulkOptions, Columns, run
    from ..bulk.devices import parse_devices
    from ..remote import is_url

    if args.texts:
        raise InvalidInputError("TEXT arguments do not go into a directory of shards: put them in a file, or "
                                "pipe them in with --input -")
    if not args.input:
        raise InvalidInputError("nothing to embed: give --input FILE (globs too; - for standard input)")
    options = BulkOptions(
        artefact=args.artefact if is_url(args.artefact) else Path(args.artefact), inputs=tuple(args.input),
        output=Path(args.output),
        input_format=args.input_format, columns=Columns(args.text_column, args.id_column),
        prompt="query" if args.query or args.instruction is not None else "document",
        instruction=args.instruction, dimensions=args.dimensions, backend=args.backend,
        precision=args.precision, attention=args.attention, shard_size=args.shard_size or SHARD_SIZE,
        on_error=args.on_error or "fail", overwrite=args.overwrite, ray=_ray_options(args),
        devices=parse_devices(args.devices) if args.devices is not None else (),
        workers=1 if args.workers is None else args.workers)
    record = run(options)
    dims = record.model.get("dimensions", "?")
    line = f"wrote {record.rows:,} x {dims} embeddings in {len(record.shards)} shards to {args.output}"
    if record.skipped:
        line += f"; skipped {record.skipped:,} rows (listed in the run record)"
    print(line, file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("embed", help="embed texts with an exported artefact (no PyTorch)",
                       description="Embed TEXT arguments and/or the rows of --input. Without --output the "
                       "vectors are printed as one JSON document; --output FILE.npy / .jsonl holds them in memory; "
                       "--output DIR/ streams any number of rows into Parquet shards, resumably (corpus mode).")
    p.add_argument("artefact", help="artefact directory written by `embedrt export`, or its URL (s3://..., gs://..., "
                   "file://...: copied once into EMBEDRT_CACHE; needs embedrt[bulk])")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--input", metavar="FILE", nargs="+", action="extend",
                   help="files or globs ('data/*.parquet', ** too) of TXT (one text per line, split on LF or CRLF "
                   "only), JSONL, CSV or Parquet, picked by suffix; - reads standard input; UTF-8")
    p.add_argument("--input-format", choices=("txt", "jsonl", "csv", "parquet"),
                   help="how to read every --input (default: by suffix: .jsonl/.ndjson, .csv, .parquet/.pq, "
                   "else txt)")
    p.add_argument("--text-column", default="text", metavar="NAME",
                   help="the field (JSONL) or column (CSV, Parquet) holding the text (default: text)")
    p.add_argument("--output", metavar="FILE|DIR/", help="write .npy (float32 [n, d]) or .jsonl instead of stdout; "
                   "or a directory (ending in /, or existing) of Parquet shards and a run record, streamed, "
                   "resumable (docs/bulk.md)")
    corpus = p.add_argument_group("corpus mode (--output DIR/)")
    corpus.add_argument("--id-column", metavar="NAME", help="carry this field / column into the shards' id "
                        "column, unchanged (integers or strings); default: the row's index across all inputs")
    corpus.add_argument("--shard-size", type=int, metavar="ROWS", help="rows per Parquet shard (default: 10000)")
    corpus.add_argument("--on-error", choices=("fail", "skip"),
                        help="a bad row (no text, null text, not UTF-8, not JSON): stop with its file and line "
                        "(fail, the default) or skip it and list it in the run record (skip)")
    corpus.add_argument("--overwrite", action="store_true",
                        help="start over in a directory that holds an earlier run (default: resume it)")
    corpus.add_argument("--devices", metavar="0,1,...|all",
                        help="embed on these GPUs of this machine, a worker process each, shards shared out between "
                        "them (0,0,1,1: two workers per GPU; all: each visible GPU); indices as CUDA numbers them "
                        "after CUDA_VISIBLE_DEVICES")
    corpus.add_argument("--workers", type=int, metavar="N",
                        help="embed in N worker processes on the CPU, which split its cores between them (default: "
                        "1, in this process, whose ONNX Runtime already uses every core; 2 measured 0.97x on 2 cores: "
                        "measure yours with scripts/bench_bulk.py --workers N)")
    corpus.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="embed on a Ray cluster: actors embed and write the shards, this process reads the "
                        "inputs and keeps the record (same layout, resume rule and vectors); ADDRESS as ray.init "
                        "takes it: none = RAY_ADDRESS or the cluster started last on this machine or a new local "
                        "one, auto, HOST:6379, ray://HOST:10001; --output must be a path every node writes, the "
                        "artefact a path every node reads or a URL each fetches (needs embedrt[ray])")
    corpus.add_argument("--actors", type=int, metavar="N",
                        help="--ray: actors (default: one per GPU of the cluster, else its CPUs over --cpus-per-actor)")
    corpus.add_argument("--cpus-per-actor", type=int, metavar="N",
                        help="--ray: CPUs each actor reserves, also its ONNX Runtime threads (default: 1 with a "
                        "GPU, else a node's CPUs split evenly, at most 8)")
    corpus.add_argument("--gpus-per-actor", type=float, metavar="N",
                        help="--ray: GPUs each actor reserves (default: 1 where the cluster has GPUs, else 0: CPU "
                        "actors)")
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
