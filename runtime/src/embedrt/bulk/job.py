"""One corpus job: inputs streamed through ``Embedder`` into Parquet shards, resumable, in this process, in
worker processes on this machine (``BulkOptions.devices`` / ``workers``; ``devices.py``) or on a Ray
cluster (``BulkOptions.ray``; ``ray/driver.py``).

Order of work: the output directory is created, probed and locked, the inputs resolved and
fingerprinted, their columns checked, the options checked against the artefact's manifest, and a
recorded earlier run compared and verified — all before the model loads, so that a mistake costs
nothing. Then rows stream from the readers (``ShardBook``) through ``embed_blocks`` (one window of
texts at a time) into the current shard, which is written atomically once full and recorded.

Windows start again at each shard (a shard of 10,000 rows is embedded as windows of 4,096, 4,096 and
1,808 texts), so that a shard's vectors depend on its own rows only: a resumed run, or a Ray worker
given the shard, embeds them exactly as an uninterrupted run in one process does.

Memory: one window of texts (``WINDOW``: 4,096) with their token ids, and one shard of vectors and
ids (``shard_size`` x dimensions x 4 bytes: 10,000 x 1,024 is 41 MB), plus the model; whatever the
corpus size. Resuming re-reads the inputs from the start (reading is cheap next to embedding),
checks that the rows of each finished shard are those it was made from, and embeds the rest.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..embedder import Embedder
from ..errors import InvalidInputError
from ..manifest import Manifest, load_manifest
from ..pooling import check_dimensions
from ..remote import absolute, manifest_bytes
from ..streaming import WINDOW, embed_blocks
from . import readers
from .arrow import pyarrow
from .inputs import expected_rows, fingerprint, resolve
from .progress import Progress
from .readers import Columns
from .record import Output, Record, differences, model_differences
from .shardbook import Pending, ShardBook, describe
from .shards import write_shard

SHARD_SIZE = 10_000  # rows per shard: a few seconds to minutes of work, the most an interruption loses


@dataclass(frozen=True)
class RayOptions:
    """Where and how a job runs on Ray (``embedrt embed ... --ray [ADDRESS]``; docs/bulk.md)."""

    # ray.init's address: None finds a cluster (RAY_ADDRESS, then the one started last on this machine) or
    # starts a local one; "auto" only connects; "HOST:6379" or "ray://HOST:10001" a given cluster.
    address: str | None = None
    actors: int | None = None  # None: one per GPU of the cluster, or its CPUs over cpus_per_actor
    gpus_per_actor: float | None = None  # None: 1 where the cluster has GPUs, else 0 (CPU actors)
    cpus_per_actor: int | None = None  # None: 1 with a GPU, else a node's CPUs split evenly, <= 8; also ORT threads


@dataclass(frozen=True)
class BulkOptions:
    """A corpus job: what ``embedrt embed ... --output DIR/`` maps its flags onto."""

    artefact: Path | str  # a directory, or a URL (remote.py: every process fetches its own copy)
    inputs: tuple[str, ...]
    output: Path
    input_format: str | None = None  # None: by suffix
    columns: Columns = field(default_factory=Columns)
    prompt: str = "document"  # "document" | "query" (with ``instruction``, or the model's default)
    instruction: str | None = None
    dimensions: int | None = None
    backend: str = "auto"
    precision: str = "auto"
    attention: str = "auto"
    shard_size: int = SHARD_SIZE
    on_error: str = "fail"  # "fail" | "skip"
    overwrite: bool = False
    window: int = WINDOW
    progress: bool = True
    ray: RayOptions | None = None  # None: on this machine
    devices: tuple[int, ...] = ()  # GPUs of this machine, a worker process each (repeats: several on one GPU)
    workers: int = 1  # without devices: CPU worker processes (1: embed in this process)


def run(options: BulkOptions, *, log: Callable[[str], None] | None = None,
        after_shard: Callable[[Record], None] | None = None) -> Record:
    """Run (or resume) the job; the final record. ``after_shard`` is called once each shard is recorded."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if options.shard_size < 1:
        raise InvalidInputError(f"--shard-size must be at least 1, not {options.shard_size}")
    if options.on_error not in ("fail", "skip"):
        raise InvalidInputError(f"--on-error must be fail or skip, not {options.on_error!r}")
    _check_placement(options)
    if options.ray is not None:
        from .ray.cluster import import_ray

        import_ray()  # without the ray extra (which brings pyarrow too), say so before anything
    pyarrow("writing Parquet shards")  # an environment without the bulk extra is told so before anything
    found = resolve(options.inputs, options.input_format)
    if not found:
        raise InvalidInputError("nothing to embed: give --input FILE (globs too; - for standard input)")
    created = not options.output.exists()
    output = Output.open(options.output)  # first: an output that cannot be written costs nothing
    try:
        return _run(options, found, output, say, after_shard)
    except BaseException:
        if created and not any(options.output.iterdir()):
            options.output.rmdir()  # a run that failed before writing anything leaves no trace
        raise
    finally:
        output.close()


def _run(options: BulkOptions, found: list[tuple[str, str]], output: Output, say: Callable[[str], None],
         after_shard: Callable[[Record], None] | None) -> Record:
    previous = None if options.overwrite else output.previous()
    known = {i.path: i for i in previous.inputs} if previous else {}
    inputs = [fingerprint(path, fmt, known.get(path)) for path, fmt in found]
    for source in inputs:
        readers.check(source, options.columns)
    manifest = load_manifest(options.artefact)
    check_prompt(manifest, options.prompt, options.instruction, options.dimensions)
    settings = _settings(options, manifest)
    record = Record(settings, inputs)
    if previous is not None:
        changed = differences(previous, settings, inputs)
        if changed:
            raise InvalidInputError(f"--output {output.path} holds a run made with other arguments "
                                    f"({'; '.join(changed)}): rerun with the same ones to resume it, pass "
                                    "--overwrite to start over, or choose another --output")
        record = output.verified(previous, say)
        if record.complete:
            say(f"{output.path} already holds this run, complete ({record.rows:,} rows); nothing to do")
            return record
        if record.shards:
            say(f"resuming: {len(record.shards)} shards ({record.rows:,} rows) already done")
        record.inputs = inputs  # the same, and mtimes as they are now
    output.remove_temporaries()
    book = ShardBook(record, output, options.columns, options.on_error, after_shard)
    if options.ray is not None:
        from .ray.driver import run_on_ray  # imports Ray, which only a --ray job needs

        run_on_ray(options, book, say)
        return record
    if options.devices or options.workers > 1:
        from .devices import run_on_workers

        run_on_workers(options, book, say)
        return record
    with Embedder.load(options.artefact, options.backend, precision=options.precision,
                       backend_config=BackendConfig(attention=options.attention)) as embedder:
        begin(options, book, describe(embedder, options.dimensions))
        _LocalJob(embedder, options, book).run()
    return record


def _check_placement(options: BulkOptions) -> None:
    """Where the job runs: one of this process, worker processes (GPUs or CPU) and Ray."""
    if options.workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, not {options.workers}")
    if options.devices and options.workers > 1:
        raise InvalidInputError("--devices and --workers do not go together: --devices starts one worker per GPU "
                                "listed (list one twice for two on it), --workers CPU workers")
    if options.ray is not None and (options.devices or options.workers > 1):
        raise InvalidInputError(f"{'--devices' if options.devices else '--workers'} places workers on this machine; "
                                "with --ray, Ray places them (--actors, --gpus-per-actor, --cpus-per-actor)")
    if any(d < 0 for d in options.devices):
        raise InvalidInputError(f"--devices takes GPU indices (0 and up), not {options.devices}")


def begin(options: BulkOptions, book: ShardBook, model: dict[str, Any]) -> None:
    """Once the model is loaded (``model``: ``shardbook.describe``): refuse finished shards it did not make,
    clear an earlier run under ``--overwrite``, and take the directory (the record says so from here)."""
    changed = model_differences(book.record, model)
    if changed:
        raise InvalidInputError(f"the finished shards in {book.output.path} were made by the model running "
                                f"otherwise ({'; '.join(changed)}); pass --backend / --precision / --attention "
                                "to match, or --overwrite to start over")
    if options.overwrite:
        book.output.clear()
    book.record.model = model
    book.output.save(book.record)
    book.started = time.monotonic()  # the record's seconds count the work, not loading the model


def check_prompt(manifest: Manifest, prompt: str, instruction: str | None, dimensions: int | None) -> None:
    """The model-dependent options, refused before the model loads."""
    check_dimensions(dimensions, manifest.dimensions_range)
    if prompt == "query":
        manifest.prompts.check_instruction(instruction)
    elif prompt != "document":
        raise InvalidInputError(f"prompt must be 'document' or 'query', not {prompt!r}")
    elif instruction is not None:
        raise InvalidInputError("an instruction formats queries: pass --query with it, or leave it out")


def _settings(options: BulkOptions, manifest: Manifest) -> dict[str, Any]:
    """The arguments a resumed run must repeat; inputs are compared by fingerprint besides."""
    digest = hashlib.sha256(manifest_bytes(options.artefact)).hexdigest()
    return {"artefact": absolute(options.artefact), "manifest_sha256": digest, "model": manifest.name,
            "backend": options.backend, "precision": options.precision, "attention": options.attention,
            "prompt": options.prompt, "instruction": options.instruction, "dimensions": options.dimensions,
            "text_column": options.columns.text, "id_column": options.columns.id, "shard_size": options.shard_size}


class _LocalJob:
    """The loop in this process: each shard's texts through ``embed_blocks``, its vectors into a Parquet shard."""

    def __init__(self, embedder: Embedder, options: BulkOptions, book: ShardBook) -> None:
        self.embedder, self.options, self.book = embedder, options, book
        self.vectors: np.ndarray | None = None  # the current shard's, allocated once
        self.done = book.resume  # input rows behind the progress bar

    def run(self) -> None:
        book, size = self.book, self.options.shard_size
        texts = book.texts()
        progress = Progress(expected_rows(book.record.inputs), book.resume, self.options.progress)
        try:
            while True:
                rows, tokens = self._embed(islice(texts, size), progress)
                if len(rows) < size:  # the last shard, or the rows before a bad one under --on-error fail
                    break
                self._write(rows, tokens, rows[-1].row + 1, progress)
            if book.failure is not None:
                raise book.failure  # the full shards before it are written: a resumed run starts after them
            progress.update(book.read - self.done, 0)  # skipped rows after the last embedded one
            if rows:
                self._write(rows, tokens, book.read, progress)  # it also covers trailing skipped rows
        finally:
            progress.close()
        book.finish()

    def _embed(self, texts: Iterator[str], progress: Progress) -> tuple[list[Pending], int]:
        """One shard's texts, window by window, into ``self.vectors``: its rows and tokens."""
        opts, tokens = self.options, 0
        rows: list[Pending] = []
        for block in embed_blocks(self.embedder, texts, prompt=opts.prompt, instruction=opts.instruction,
                                  dimensions=opts.dimensions, window=opts.window):
            if self.vectors is None:
                self.vectors = np.empty((opts.shard_size, block.vectors.shape[1]), dtype=np.float32)
            self.vectors[len(rows):len(rows) + len(block.vectors)] = block.vectors
            rows += self.book.take(len(block.vectors))
            tokens += block.tokens
            progress.update(rows[-1].row + 1 - self.done, block.tokens)
            self.done = rows[-1].row + 1
        return rows, tokens

    def _write(self, rows: list[Pending], tokens: int, end: int, progress: Progress) -> None:
        name = self.book.next_name
        assert self.vectors is not None
        written = write_shard(self.book.output.path / name, [p.id for p in rows], self.book.record.id_type or "int64",
                              self.vectors[:len(rows)])
        self.book.enter(rows, end, tokens, written)
        progress.shard_written(name)


__all__ = ["SHARD_SIZE", "BulkOptions", "RayOptions", "begin", "check_prompt", "run"]
