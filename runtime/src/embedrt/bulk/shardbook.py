"""The part of a corpus job that is the same whoever embeds: rows read, accepted or skipped, cut into
shards, and each finished shard entered in the run record.

``ShardBook.texts`` reads every input in order (the row index counts across inputs, skipped rows
included), checks the rows of the shards finished by an earlier run against their ``texts_sha256``
instead of embedding them again, stops at the first bad row under ``--on-error fail`` or notes it
under ``skip``, and yields the texts to embed, each one's id and digest left in ``pending``. The
caller embeds them however it does (``job`` in this process; ``parallel`` through workers), takes
a shard's rows with ``take`` and enters the written shard with ``enter``, in shard order.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from ..embedder import Embedder
from ..errors import InvalidInputError
from . import readers
from .inputs import STDIN, Input
from .readers import Columns, Problem, Row
from .record import SKIPPED_LISTED, Output, Record, now
from .shards import shard_name


class Pending(NamedTuple):
    row: int  # its index across all inputs
    id: Any
    digest: bytes  # of its id and text: a resumed run checks the rows it reads again against these


def row_digest(id_: Any, text: str) -> bytes:
    return hashlib.blake2b(f"{id_!r}\x1f{text}".encode(), digest_size=16).digest()


def describe(embedder: Embedder, dimensions: int | None) -> dict[str, Any]:
    """How the model runs, as the record keeps it (``model``); a resumed run must run it alike."""
    info = embedder.info()
    backend = info.backend
    return {"name": info.name, "backend": backend.backend, "precision": backend.precision,
            "attention": backend.attention, "device": backend.device, "graph": backend.graph,
            "dimensions": dimensions or info.dimensions}


class ShardBook:
    """Reads the rows, hands out the texts to embed, and keeps the record shard by shard."""

    def __init__(self, record: Record, output: Output, columns: Columns, on_error: str,
                 after_shard: Callable[[Record], None] | None = None) -> None:
        self.record, self.output, self.columns = record, output, columns
        self.fail = on_error == "fail"
        self.after_shard = after_shard
        self.pending: deque[Pending] = deque()  # rows whose texts were handed out, not yet taken
        self.skipped: list[tuple[int, Problem]] = []  # skipped rows not yet in the record
        self.read = 0  # rows read so far
        self.tallies: dict[int, readers.Tally] = {}
        self.resume = record.inputs_done
        self.check = _Finished(list(record.shards))  # those finished before this run
        # A bad row under --on-error fail: raised by the caller once the full shards before it are written.
        self.failure: InvalidInputError | None = None
        self.started = time.monotonic()
        self.seconds_before = record.seconds

    def texts(self) -> Iterator[str]:
        """The texts to embed, from the first row after the finished shards; each one's id goes to ``pending``."""
        for index, source, row in self._rows():
            self.read = index + 1
            id_, problem = self._accept(index, source, row)
            if index < self.resume:  # in a finished shard: check it, do not embed it again
                self.check.add(index, None if problem else row_digest(id_, row.text))
                continue
            self.check.done()
            if problem is not None:
                if self.fail:  # stop reading; the rows before it still go into full shards
                    self.failure = InvalidInputError(f"{problem}; pass --on-error skip to skip such rows (the run "
                                                     "record lists them)")
                    return
                self.skipped.append((index, problem))
                continue
            self.pending.append(Pending(index, id_, row_digest(id_, row.text)))
            yield row.text
        self.check.done()

    def take(self, count: int) -> list[Pending]:
        """The next ``count`` rows handed out, in order."""
        return [self.pending.popleft() for _ in range(count)]

    @property
    def next_name(self) -> str:
        return shard_name(len(self.record.shards))

    def enter(self, rows: Sequence[Pending], end: int, tokens: int, written: dict[str, Any] | None) -> None:
        """Record the next shard, written from ``rows`` (``written``: its ``bytes`` and ``sha256``) and covering
        input rows up to ``end`` (exclusive), skipped ones included. No rows: the skipped rows after the last
        shard, at the end of the run, which it then covers."""
        record = self.record
        start = record.rows
        skipped = [(i, p) for i, p in self.skipped if i < end]
        self.skipped = self.skipped[len(skipped):]
        if rows:
            assert written is not None
            digest = hashlib.sha256(b"".join(p.digest for p in rows)).hexdigest()
            record.shards.append({"file": self.next_name, "rows": [start, start + len(rows)],
                                  "inputs": [record.inputs_done, end], **written, "tokens": tokens,
                                  "skipped": len(skipped), "texts_sha256": digest})
            record.tokens += tokens
        elif record.shards:
            record.shards[-1]["inputs"][1] = end
            record.shards[-1]["skipped"] += len(skipped)
        record.skipped += len(skipped)
        room = max(0, SKIPPED_LISTED - len(record.skipped_rows))
        record.skipped_rows += [{"index": i, **p.to_dict()} for i, p in skipped[:room]]
        self.save()  # without a shard (every row skipped) these skipped rows count once complete: see truncate
        if rows and self.after_shard is not None:
            self.after_shard(record)

    def finish(self) -> None:
        """After the last shard: the skipped rows after it, standard input's fingerprint, ``complete``."""
        if self.read > self.record.inputs_done:
            self.enter([], self.read, 0, None)
        for n, tally in self.tallies.items():  # standard input, now that it has been read whole
            self.record.inputs[n] = Input(STDIN, self.record.inputs[n].format, tally.size, None,
                                          tally.digest.hexdigest())
        self.record.complete, self.record.finished = True, now()
        self.save()

    def save(self) -> None:
        self.record.seconds = self.seconds_before + time.monotonic() - self.started
        self.output.save(self.record)

    def _rows(self) -> Iterator[tuple[int, Input, Row]]:
        index = 0
        for n, source in enumerate(self.record.inputs):
            tally = self.tallies.setdefault(n, readers.Tally()) if source.path == STDIN else None
            for row in readers.read(source, self.columns, tally):
                yield index, source, row
                index += 1

    def _accept(self, index: int, source: Input, row: Row) -> tuple[Any, Problem | None]:
        """The row's id, or why it cannot be embedded: the reader's problem, or an id of another kind
        than the earlier ones (the id column has one type)."""
        if row.problem is not None:
            return None, row.problem
        if self.columns.id is None:
            return index, None
        kind = "string" if isinstance(row.id, str) else "int64"
        if self.record.id_type is None:
            self.record.id_type = kind
        elif kind != self.record.id_type:
            return None, readers.problem_at(source, row.at, f"has id {row.id!r}, a {kind}, where the earlier ids "
                                                            f"are {self.record.id_type}s; ids must be of one kind")
        return row.id, None


class _Finished:
    """Checks that the rows read again for the finished shards are those the shards were made from."""

    def __init__(self, shards: list[dict[str, Any]]) -> None:
        self.shards = shards
        self.n = 0
        self.digest = hashlib.sha256()  # of the row digests, as ShardBook.enter computes it

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



__all__ = ["Pending", "ShardBook", "describe", "row_digest"]
