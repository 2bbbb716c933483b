"""``embedrt embed ... --output DIR/ --ray``: the corpus job of ``job.py``, its embedding done by Ray actors.

This process, the driver, does what a local run does: it reads the inputs through ``ShardBook`` (the
same readers, ids, bad rows and resume checks), cuts the rows into shards of ``shard_size``, and
keeps the run record. Each shard's ids and texts go to one of a pool of ``ShardWriter`` actors, which
embeds them window by window from the shard's first row, as the local job does, and writes the shard
into the output directory; the driver enters finished shards in the record in shard order. So the
shards, their row ranges and the record are the local job's, and so are the vectors, bit for bit
where the actors run the same graph on the same kind of machine.

Flow: at most ``DEPTH`` shards are queued on an actor, and at most ``AHEAD`` per actor lie between the
first shard not yet recorded and the last handed out; reading waits while either is full. Faults:
actors run with ``max_restarts=-1`` and ``max_task_retries=-1``, so an actor whose process or node
dies is started again (it loads the model again) and given the shards it held again; a shard written
twice is the same file, renamed into place atomically. Shards written after the last recorded one
when the driver itself stops are not in the record: the next run removes and redoes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import EmbedrtError
from ..inputs import expected_rows
from ..job import BulkOptions, begin
from ..progress import Progress
from ..shardbook import Pending, ShardBook
from ..shards import shard_name
from .cluster import RayJobError, connected, import_ray, plan_actors
from .worker import ShardWriter, WorkerSpec

DEPTH = 2  # shards queued on one actor: the next is there when it finishes one
AHEAD = 4  # shards per actor handed out beyond the first one not yet recorded: what a stop can waste


def run_on_ray(options: BulkOptions, book: ShardBook, say: Callable[[str], None]) -> None:
    """Run the job whose preparation ``job.run`` has done (``book``) on Ray, as ``options.ray`` says."""
    assert options.ray is not None
    ray = import_ray()
    with connected(ray, options.ray.address):
        plan = plan_actors(ray, options.ray)
        spec = WorkerSpec(str(options.artefact.resolve()), options.backend, options.precision, options.attention,
                          plan.threads, options.prompt, options.instruction, options.dimensions, options.window)
        remote = ray.remote(ShardWriter).options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=-1,
                                                 max_task_retries=-1)
        actors = [remote.remote(spec, str(book.output.path.resolve())) for _ in range(plan.count)]
        try:
            begin(options, book, _model(ray, actors))
            say(f"embedding on Ray: {plan}")
            _RayJob(_Pool(ray, actors), options, book).run()
        finally:
            for actor in actors:
                ray.kill(actor)


def _model(ray: ModuleType, actors: list[Any]) -> dict[str, Any]:
    """How the actors run the model (once every one has loaded it); refused where one could not."""
    replies = ray.get([actor.describe.remote() for actor in actors])
    for reply in replies:
        if "error" in reply:
            raise RayJobError(f"a Ray worker could not load the model ({reply['error']}); the artefact must be a "
                              "path every node of the cluster can read (a shared file system)")
    models = {repr(sorted(reply["model"].items())) for reply in replies}
    if len(models) > 1:
        raise RayJobError(f"the Ray workers run the model differently ({'; '.join(sorted(models))}); pass --backend "
                          "and --precision, or --gpus-per-actor, so that they run it alike")
    return dict(replies[0]["model"])


@dataclass
class _Work:
    seq: int  # its place among the shards handed out by this run
    name: str
    rows: list[Pending]
    end: int  # input rows it covers end here (exclusive)


class _Pool:
    """Shards handed to the least busy actor; results taken back in shard order."""

    def __init__(self, ray: ModuleType, actors: list[Any]) -> None:
        self.ray, self.actors = ray, actors
        self.load = [0] * len(actors)
        self.running: dict[Any, tuple[_Work, int]] = {}  # ObjectRef -> (work, actor)
        self.finished: dict[int, tuple[_Work, dict[str, Any]]] = {}
        self.handed = 0  # shards handed out
        self.next = 0  # the next shard to give back

    @property
    def full(self) -> bool:
        return min(self.load) >= DEPTH or self.handed - self.next >= AHEAD * len(self.actors)

    def submit(self, work: _Work, ids: list[Any], id_type: str, texts: list[str]) -> None:
        n = self.load.index(min(self.load))
        self.running[self.actors[n].write.remote(work.name, ids, id_type, texts)] = (work, n)
        self.load[n] += 1
        self.handed += 1

    def wait(self) -> None:
        """Until at least one running shard is finished."""
        assert self.running, "full with nothing running: the finished shards were not taken back"
        ready, _ = self.ray.wait(list(self.running), num_returns=1)
        for ref in ready:
            work, n = self.running.pop(ref)
            self.load[n] -= 1
            self.finished[work.seq] = (work, self._result(ref))

    def done(self) -> Iterator[tuple[_Work, dict[str, Any]]]:
        """Finished shards, in order, up to the first one still running."""
        while self.next in self.finished:
            yield self.finished.pop(self.next)
            self.next += 1

    def _result(self, ref: Any) -> dict[str, Any]:
        exceptions = self.ray.exceptions
        try:
            return dict(self.ray.get(ref))
        except exceptions.RayTaskError as exc:
            if isinstance(exc.cause, EmbedrtError):
                raise exc.cause from None
            raise RayJobError(f"a Ray worker failed: {exc.cause!r}") from exc
        except exceptions.RayError as exc:  # an actor that cannot be started again, a lost object
            raise RayJobError(f"Ray could not finish a shard: {exc}") from exc


class _RayJob:
    """The driver's loop: read a shard, hand it out, record the finished ones in order."""

    def __init__(self, pool: _Pool, options: BulkOptions, book: ShardBook) -> None:
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
        book.output.remove_temporaries()  # left by actors that died while writing; all are idle now
        book.finish()

    def _hand_out(self, rows: list[Pending], texts: list[str], end: int) -> None:
        while self.pool.full:
            self.pool.wait()
            self._record()
        work = _Work(self.pool.handed, shard_name(self.first + self.pool.handed), rows, end)
        self.pool.submit(work, [r.id for r in rows], self.book.record.id_type or "int64", texts)

    def _record(self) -> None:
        for work, reply in self.pool.done():
            path = self.book.output.path / work.name
            if work.name != self.book.next_name or reply["rows"] != len(work.rows):
                raise RayJobError(f"{work.name} came back with {reply['rows']} rows for {len(work.rows)} texts")
            if not _has_size(path, reply["bytes"]):
                raise RayJobError(f"{work.name}, written by a Ray worker, is not in --output {self.book.output.path} "
                                  "as this machine sees it: on a Ray cluster --output must be a path every node "
                                  "can write (a shared file system)")
            self.book.enter(work.rows, work.end, reply["tokens"], {"bytes": reply["bytes"], "sha256": reply["sha256"]})
            self.progress.update(work.end - self.done, reply["tokens"])
            self.done = work.end
            self.progress.shard_written(work.name)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


__all__ = ["run_on_ray"]
