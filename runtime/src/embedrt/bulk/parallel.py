"""A corpus job whose shards are embedded by a pool of workers (``ShardWriter``), not in this process:
Ray actors (``ray/driver.py``, ``--ray``) or worker processes on this machine (``devices.py``,
``--devices`` / ``--workers``).

This process does what a local run does: it reads the inputs through ``ShardBook`` (the same
readers, ids, bad rows and resume checks), cuts the rows into shards of ``shard_size``, and keeps
the run record. Each shard's ids and texts go to the least busy worker, which embeds them from the
shard's first row, as the local job does, and writes the shard into the output directory; finished
shards are entered in the record in shard order. So the shards, their row ranges and the record are
the local job's, and so are the vectors, bit for bit where the workers run the same graph on the same
kind of device.

Flow: at most ``DEPTH`` shards are queued on a worker, and at most ``AHEAD`` per worker lie between
the first shard not yet recorded and the last handed out; reading waits while either is full. Shards
written after the last recorded one when the job stops are not in the record: the next run removes
and redoes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ..errors import EmbedrtError
from .inputs import expected_rows
from .job import BulkOptions
from .progress import Progress
from .shardbook import Pending, ShardBook
from .shards import shard_name

DEPTH = 2  # shards queued on one worker: the next is there when it finishes one
AHEAD = 4  # shards per worker handed out beyond the first one not yet recorded: what a stop can waste


class WorkerError(EmbedrtError):
    """The workers could not do the work: one could not load the model or write a shard, failed or died."""


@dataclass
class Work:
    seq: int  # its place among the shards handed out by this run
    name: str
    rows: list[Pending]
    end: int  # input rows it covers end here (exclusive)


class ShardPool(ABC):
    """Shards handed to the least busy worker; results taken back in shard order. Subclasses say how a
    shard reaches a worker (``send``), how to wait for any (``ready``) and how a result is read (``result``)."""

    # Said when a shard a worker reports written is not where this process looks for it.
    unseen_hint = "the workers write another --output than this process reads"

    def __init__(self, workers: int) -> None:
        self.load = [0] * workers
        self.running: dict[Any, tuple[Work, int]] = {}  # handle -> (work, worker)
        self.finished: dict[int, tuple[Work, dict[str, Any]]] = {}
        self.handed = 0  # shards handed out
        self.next = 0  # the next shard to give back

    @abstractmethod
    def send(self, worker: int, name: str, ids: list[Any], id_type: str, texts: list[str]) -> Any:
        """Start shard ``name`` on ``worker``; a handle that ``ready`` and ``result`` take."""

    @abstractmethod
    def ready(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` is finished; the finished ones."""

    @abstractmethod
    def result(self, handle: Any) -> dict[str, Any]:
        """What ``ShardWriter.write`` returned, or its error raised (an ``EmbedrtError``)."""

    @property
    def full(self) -> bool:
        return min(self.load) >= DEPTH or self.handed - self.next >= AHEAD * len(self.load)

    def submit(self, work: Work, ids: list[Any], id_type: str, texts: list[str]) -> None:
        n = self.load.index(min(self.load))
        self.running[self.send(n, work.name, ids, id_type, texts)] = (work, n)
        self.load[n] += 1
        self.handed += 1

    def wait(self) -> None:
        """Until at least one running shard is finished."""
        assert self.running, "full with nothing running: the finished shards were not taken back"
        for handle in self.ready(list(self.running)):
            work, n = self.running.pop(handle)
            self.load[n] -= 1
            self.finished[work.seq] = (work, self.result(handle))

    def done(self) -> Iterator[tuple[Work, dict[str, Any]]]:
        """Finished shards, in order, up to the first one still running."""
        while self.next in self.finished:
            yield self.finished.pop(self.next)
            self.next += 1


class ParallelJob:
    """The loop: read a shard, hand it out, record the finished ones in order."""

    def __init__(self, pool: ShardPool, options: BulkOptions, book: ShardBook) -> None:
        self.pool, self.options, self.book = pool, options, book
        self.first = len(book.record.shards)  # the index of this run's first shard
        self.done = book.resume  # input rows behind the progress bar
        self.progress = Progress(expected_rows(book.record.inputs), book.resume, options.progress)

    def run(self) -> None:
        book, size = self.book, self.options.shard_size
        texts = book.texts()
        try:
            while True:
                batch = list(islice(texts, size))
                rows = book.take(len(batch))
                last = len(batch) < size
                if batch and not (last and book.failure is not None):  # under --on-error fail: full shards only
                    self._hand_out(rows, batch, book.read if last else rows[-1].row + 1)
                if last:
                    break
            while self.pool.running:
                self.pool.wait()
                self._record()
            if book.failure is not None:
                raise book.failure
            self.progress.update(book.read - self.done, 0)  # skipped rows after the last embedded one
        finally:
            self.progress.close()
        book.output.remove_temporaries()  # left by workers that died while writing; all are idle now
        book.finish()

    def _hand_out(self, rows: list[Pending], texts: list[str], end: int) -> None:
        while self.pool.full:
            self.pool.wait()
            self._record()
        work = Work(self.pool.handed, shard_name(self.first + self.pool.handed), rows, end)
        self.pool.submit(work, [r.id for r in rows], self.book.record.id_type or "int64", texts)

    def _record(self) -> None:
        for work, reply in self.pool.done():
            path = self.book.output.path / work.name
            if work.name != self.book.next_name or reply["rows"] != len(work.rows):
                raise WorkerError(f"{work.name} came back with {reply['rows']} rows for {len(work.rows)} texts")
            if not _has_size(path, reply["bytes"]):
                raise WorkerError(f"{work.name}, written by a worker, is not in --output {self.book.output.path} as "
                                  f"this process sees it: {self.pool.unseen_hint}")
            self.book.enter(work.rows, work.end, reply["tokens"], {"bytes": reply["bytes"], "sha256": reply["sha256"]})
            self.progress.update(work.end - self.done, reply["tokens"])
            self.done = work.end
            self.progress.shard_written(work.name)


def agreed_model(replies: list[dict[str, Any]], worker: str = "a worker", where: str = "",
                 alike: str = "--backend and --precision", error: type[EmbedrtError] = WorkerError) -> dict[str, Any]:
    """How the workers run the model (``ShardWriter.describe`` of each), refused (``error``) where one could not
    load it (``where``: what to check) or where they run it differently (``alike``: the flags that align them)."""
    for reply in replies:
        if "error" in reply:
            raise error(f"{worker} could not load the model ({reply['error']}){where}")
    models = {repr(sorted(reply["model"].items())) for reply in replies}
    if len(models) > 1:
        raise error(f"the workers run the model differently ({'; '.join(sorted(models))}); pass {alike} so that "
                    "they run it alike")
    return dict(replies[0]["model"])


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


__all__ = ["AHEAD", "DEPTH", "ParallelJob", "ShardPool", "Work", "WorkerError", "agreed_model"]
