"""One corpus job on one machine: inputs streamed through ``Embedder`` into Parquet shards, resumable.

Order of work: the output directory is created, probed and locked, the inputs resolved and
fingerprinted, their columns checked, the options checked against the artefact's manifest, and a
recorded earlier run compared and verified — all before the model loads, so that a mistake costs
nothing. Then rows stream from the readers through ``embed_blocks`` (one window of texts at a time)
into the current shard, which is written atomically once full and recorded.

Memory: one window of texts (``WINDOW``: 4,096) with their token ids, and one shard of vectors and
ids (``shard_size`` x dimensions x 4 bytes: 10,000 x 1,024 is 41 MB), plus the model; whatever the
corpus size. Resuming re-reads the inputs from the start (reading is cheap next to embedding),
checks that the rows of each finished shard are those it was made from, and embeds the rest.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..config import BackendConfig
from ..embedder import Embedder
from ..errors import InvalidInputError
from ..manifest import Manifest, load_manifest
from ..pooling import check_dimensions
from ..streaming import WINDOW, Block, embed_blocks
from . import readers
from .arrow import pyarrow
from .inputs import STDIN, Input, expected_rows, fingerprint, resolve
from .progress import Progress
from .readers import Columns, Problem, Row
from .record import SKIPPED_LISTED, Output, Record, differences, model_differences
from .shards import shard_name, write_shard

SHARD_SIZE = 10_000  # rows per shard: a few seconds to minutes of work, the most an interruption loses


@dataclass(frozen=True)
class BulkOptions:
    """A corpus job: what ``embedrt embed ... --output DIR/`` maps its flags onto."""

    artefact: Path
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


def run(options: BulkOptions, *, log: Callable[[str], None] | None = None,
        after_shard: Callable[[Record], None] | None = None) -> Record:
    """Run (or resume) the job; the final record. ``after_shard`` is called once each shard is recorded."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if options.shard_size < 1:
        raise InvalidInputError(f"--shard-size must be at least 1, not {options.shard_size}")
    if options.on_error not in ("fail", "skip"):
        raise InvalidInputError(f"--on-error must be fail or skip, not {options.on_error!r}")
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
    _check_options(options, manifest)
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
    with Embedder.load(options.artefact, options.backend, precision=options.precision,
                       backend_config=BackendConfig(attention=options.attention)) as embedder:
        model = _model(embedder, options)
        changed = model_differences(record, model)
        if changed:
            raise InvalidInputError(f"the finished shards in {output.path} were made by the model running "
                                    f"otherwise ({'; '.join(changed)}); pass --backend / --precision / --attention "
                                    "to match, or --overwrite to start over")
        if options.overwrite:
            output.clear()
        record.model = model
        output.save(record)  # from here the directory is this run's
        _Job(embedder, options, record, output, after_shard).run()
    return record


def _check_options(options: BulkOptions, manifest: Manifest) -> None:
    """The model-dependent options, refused before the model loads."""
    check_dimensions(options.dimensions, manifest.dimensions_range)
    if options.prompt == "query":
        manifest.prompts.check_instruction(options.instruction)
    elif options.instruction is not None:
        raise InvalidInputError("an instruction formats queries: pass --query with it, or leave it out")


def _settings(options: BulkOptions, manifest: Manifest) -> dict[str, Any]:
    """The arguments a resumed run must repeat; inputs are compared by fingerprint besides."""
    digest = hashlib.sha256((options.artefact / "manifest.json").read_bytes()).hexdigest()
    return {"artefact": str(options.artefact.resolve()), "manifest_sha256": digest, "model": manifest.name,
            "backend": options.backend, "precision": options.precision, "attention": options.attention,
            "prompt": options.prompt, "instruction": options.instruction, "dimensions": options.dimensions,
            "text_column": options.columns.text, "id_column": options.columns.id, "shard_size": options.shard_size}


def _model(embedder: Embedder, options: BulkOptions) -> dict[str, Any]:
    info = embedder.info()
    backend = info.backend
    return {"name": info.name, "backend": backend.backend, "precision": backend.precision,
            "attention": backend.attention, "device": backend.device, "graph": backend.graph,
            "dimensions": options.dimensions or info.dimensions}


class _Pending(NamedTuple):
    row: int  # its index across all inputs
    id: Any
    digest: bytes  # of its id and text: a resumed run checks the rows it reads again against these


def _digest(id_: Any, text: str) -> bytes:
    return hashlib.blake2b(f"{id_!r}\x1f{text}".encode(), digest_size=16).digest()


class _Job:
    """The streaming loop: rows -> texts -> blocks -> shards, with the record kept up to date."""

    def __init__(self, embedder: Embedder, options: BulkOptions, record: Record, output: Output,
                 after_shard: Callable[[Record], None] | None) -> None:
        self.embedder, self.options, self.record, self.output = embedder, options, record, output
        self.after_shard = after_shard
        self.pending: deque[_Pending] = deque()  # rows whose texts went to the embedder, not yet in a shard
        self.skipped: list[tuple[int, Problem]] = []  # skipped rows not yet in the record
        self.read = 0  # rows read so far
        self.tallies: dict[int, readers.Tally] = {}
        self.resume = record.inputs_done
        self.check = _Finished(list(record.shards))  # those finished before this run
        self.failure: InvalidInputError | None = None  # a bad row under --on-error fail, raised once the rows
        # before it are written
        self.rows: list[_Pending] = []  # the current shard's rows
        self.vectors: np.ndarray | None = None
        self.tokens = 0
        self.started = time.monotonic()
        self.seconds_before = record.seconds

    def run(self) -> None:
        opts = self.options
        blocks = embed_blocks(self.embedder, self._texts(), prompt=opts.prompt, instruction=opts.instruction,
                              dimensions=opts.dimensions, window=opts.window)
        progress = Progress(expected_rows(self.record.inputs), self.resume, opts.progress)
        try:
            done = self.resume
            for block in blocks:
                last = self._take(block, progress)
                progress.update(last + 1 - done, block.tokens)
                done = last + 1
            if self.failure is not None:
                raise self.failure
            progress.update(self.read - done, 0)  # skipped rows after the last embedded one
            if self.rows or self.read > self.record.inputs_done:
                self._write(self.read, progress)  # the last shard (it may be short); trailing skipped rows
        finally:
            progress.close()
        for n, tally in self.tallies.items():  # standard input, now that it has been read whole
            self.record.inputs[n] = Input(STDIN, self.record.inputs[n].format, tally.size, None,
                                          tally.digest.hexdigest())
        self.record.complete, self.record.finished = True, _now()
        self._save()

    def _rows(self) -> Iterator[tuple[int, Input, Row]]:
        index = 0
        for n, source in enumerate(self.record.inputs):
            tally = self.tallies.setdefault(n, readers.Tally()) if source.path == STDIN else None
            for row in readers.read(source, self.options.columns, tally):
                yield index, source, row
                index += 1

    def _texts(self) -> Iterator[str]:
        """The texts to embed, from the first row after the finished shards; each one's id goes to ``pending``."""
        fail = self.options.on_error == "fail"
        for index, source, row in self._rows():
            self.read = index + 1
            id_, problem = self._accept(index, source, row)
            if index < self.resume:  # in a finished shard: check it, do not embed it again
                self.check.add(index, None if problem else _digest(id_, row.text))
                continue
            self.check.done()
            if problem is not None:
                if fail:  # stop reading; the rows before it still go into full shards
                    self.failure = InvalidInputError(f"{problem}; pass --on-error skip to skip such rows (the run "
                                                     "record lists them)")
                    return
                self.skipped.append((index, problem))
                continue
            self.pending.append(_Pending(index, id_, _digest(id_, row.text)))
            yield row.text
        self.check.done()

    def _accept(self, index: int, source: Input, row: Row) -> tuple[Any, Problem | None]:
        """The row's id, or why it cannot be embedded: the reader's problem, or an id of another kind
        than the earlier ones (the id column has one type)."""
        if row.problem is not None:
            return None, row.problem
        if self.options.columns.id is None:
            return index, None
        kind = "string" if isinstance(row.id, str) else "int64"
        if self.record.id_type is None:
            self.record.id_type = kind
        elif kind != self.record.id_type:
            return None, readers.problem_at(source, row.at, f"has id {row.id!r}, a {kind}, where the earlier ids "
                                                            f"are {self.record.id_type}s; ids must be of one kind")
        return row.id, None

    def _take(self, block: Block, progress: Progress) -> int:
        """Put a block's vectors into shards (writing each as it fills); the last input index taken."""
        size = self.options.shard_size
        offset, last = 0, -1
        while offset < len(block.vectors):
            if self.vectors is None:
                self.vectors = np.empty((size, block.vectors.shape[1]), dtype=np.float32)
            filled = len(self.rows)
            count = min(len(block.vectors) - offset, size - filled)
            self.rows += [self.pending.popleft() for _ in range(count)]
            self.vectors[filled:filled + count] = block.vectors[offset:offset + count]
            self.tokens += int(block.lengths[offset:offset + count].sum())
            offset += count
            last = self.rows[-1].row
            if len(self.rows) == size:
                self._write(last + 1, progress)
        return last

    def _write(self, end: int, progress: Progress) -> None:
        """Write the current shard, covering input rows up to ``end`` (exclusive), and record it."""
        record, rows = self.record, len(self.rows)
        start = record.rows
        name = shard_name(len(record.shards))
        skipped = [(i, p) for i, p in self.skipped if i < end]
        self.skipped = self.skipped[len(skipped):]
        if rows:
            assert self.vectors is not None
            written = write_shard(self.output.path / name, [p.id for p in self.rows], record.id_type or "int64",
                                  self.vectors[:rows])
            digest = hashlib.sha256(b"".join(p.digest for p in self.rows)).hexdigest()
            record.shards.append({"file": name, "rows": [start, start + rows], "inputs": [record.inputs_done, end],
                                  **written, "tokens": self.tokens, "skipped": len(skipped), "texts_sha256": digest})
            record.tokens += self.tokens
        elif record.shards:  # only skipped rows after the last shard (at the end): it covers them
            record.shards[-1]["inputs"][1] = end
            record.shards[-1]["skipped"] += len(skipped)
        record.skipped += len(skipped)
        room = max(0, SKIPPED_LISTED - len(record.skipped_rows))
        record.skipped_rows += [{"index": i, **p.to_dict()} for i, p in skipped[:room]]
        self.rows, self.tokens = [], 0
        self._save()  # without a shard (every row skipped) these skipped rows count once complete: see truncate
        if rows:
            progress.shard_written(name)
            if self.after_shard is not None:
                self.after_shard(record)

    def _save(self) -> None:
        self.record.seconds = self.seconds_before + time.monotonic() - self.started
        self.output.save(self.record)


class _Finished:
    """Checks that the rows read again for the finished shards are those the shards were made from."""

    def __init__(self, shards: list[dict[str, Any]]) -> None:
        self.shards = shards
        self.n = 0
        self.digest = hashlib.sha256()  # of the row digests, as _Job._write computes it

    def add(self, index: int, digest: bytes | None) -> None:
        while index >= self.shards[self.n]["inputs"][1]:
            self._close()
        if digest is not None:
            self.digest.update(digest)

    def done(self) -> None:
        while self.n < len(self.shards):
            self._close()

    def _close(self) -> None:
        entry = self.shards[self.n]
        if self.digest.hexdigest() != entry["texts_sha256"]:
            first, end = entry["inputs"]
            raise InvalidInputError(f"input rows {first} to {end - 1} are not those {entry['file']} was made from: "
                                    "the input changed since; pass --overwrite to start over")
        self.n += 1
        self.digest = hashlib.sha256()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


__all__ = ["SHARD_SIZE", "BulkOptions", "run"]
