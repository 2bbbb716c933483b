"""``embedrt embed ... --output DIR/ --devices 0,1,2,3`` (or ``all``) or ``--workers N``: the corpus job's
shards embedded by worker processes on this machine, through the pool and loop of ``parallel.py``.

One worker process per entry of ``--devices`` (a CUDA index as this process sees it, after
``CUDA_VISIBLE_DEVICES``; an index listed twice gets two workers on that GPU), each loading its own
``Embedder`` on that GPU; or ``--workers N`` processes on the CPU, which split the usable CPUs between
their ONNX Runtime sessions (2 each on 8 CPUs with 4 workers). Each worker is a ``ShardWriter`` in a
process started fresh (``spawn``: no CUDA or thread state inherited), fed shards through a queue and
answering through a pipe.

Faults: a worker that dies (killed, out of memory, a GPU fault) stops the job with its device, exit
status and shard named; the shards recorded so far are kept, and the same command resumes the job.
A stopped job (Ctrl-C included) stops its workers; workers whose parent dies stop themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from ..config import usable_cpus
from ..errors import BackendError, EmbedrtError, InvalidInputError
from ..remote import absolute
from .job import BulkOptions, begin
from .parallel import ParallelJob, ShardPool, WorkerError, agreed_model
from .shardbook import ShardBook
from .worker import ShardWriter, WorkerSpec

STOP_SECONDS = 10.0  # a worker asked to stop that is still running after this is killed


def parse_devices(text: str) -> tuple[int, ...]:
    """``--devices 0,1,2,3``: GPU indices, repeats allowed (two workers on one GPU); ``all``: every visible GPU."""
    if text.strip() == "all":
        from ..backends.cuda import gpu_count

        try:
            return tuple(range(gpu_count()))
        except BackendError as exc:
            raise InvalidInputError(f"--devices all: cannot count this machine's GPUs ({exc}); list them instead "
                                    "(--devices 0,1), or leave --devices out to embed on the CPU") from None
    try:
        devices = tuple(int(part) for part in text.split(","))
    except ValueError:
        devices = ()
    if not devices or min(devices) < 0:
        raise InvalidInputError(f"--devices takes GPU indices separated by commas (0,1,2,3; 0,0 for two workers on "
                                f"GPU 0), not {text!r}")
    return devices


def worker_specs(options: BulkOptions) -> list[WorkerSpec]:
    """One spec per worker process: one per listed GPU, or ``options.workers`` on the CPU sharing its threads."""
    count = len(options.devices) or options.workers
    threads = max(1, usable_cpus() // count)
    gpus: tuple[int | None, ...] = options.devices or (None,) * options.workers
    return [WorkerSpec(absolute(options.artefact), options.backend, options.precision, options.attention,
                       threads, options.prompt, options.instruction, options.dimensions, options.window, gpu)
            for gpu in gpus]


def run_on_workers(options: BulkOptions, book: ShardBook, say: Callable[[str], None]) -> None:
    """Run the job whose preparation ``job.run`` has done (``book``) in worker processes."""
    specs = worker_specs(options)
    pool = Processes(specs, str(book.output.path.resolve()))  # stops what it started if it cannot start all
    try:
        begin(options, book, agreed_model(pool.describe(), where=_load_hint(options)))
        say(f"embedding in {_plan(specs)}")
        ParallelJob(pool, options, book).run()
    except BaseException:
        pool.close(abort=True)
        raise
    pool.close()


def _load_hint(options: BulkOptions) -> str:
    if not options.devices:
        return ""
    return ("; --devices runs the model on those GPUs: it needs a GPU backend (onnxruntime-gpu, or TensorRT with "
            "an engine for this GPU) and indices below the number of GPUs this process sees (nvidia-smi -L, "
            "CUDA_VISIBLE_DEVICES); leave --devices out to embed on the CPU")


def _plan(specs: list[WorkerSpec]) -> str:
    workers = f"{len(specs)} worker process{'es' if len(specs) > 1 else ''}"
    if specs[0].gpu is not None:
        return f"{workers} on GPU {','.join(str(s.gpu) for s in specs)}"
    return f"{workers} of {specs[0].threads} thread{'s' if specs[0].threads > 1 else ''} each"


class Processes(ShardPool):
    """Worker processes, one ``ShardWriter`` each: shards in through a queue each, replies out through a pipe."""

    def __init__(self, specs: list[WorkerSpec], output: str) -> None:
        super().__init__(len(specs))
        context = multiprocessing.get_context("spawn")
        self.specs = specs
        self.queues: list[Any] = []
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        self.held: list[deque[tuple[int, str]]] = [deque() for _ in specs]  # (handle, shard) per worker, in order
        self.replies: dict[int, Any] = {}
        self.sent = 0
        try:
            for n, spec in enumerate(specs):
                queue, (receive, send) = context.Queue(), context.Pipe(duplex=False)
                process = context.Process(target=_serve, args=(spec, output, queue, send), daemon=True,
                                          name=f"embedrt-worker-{n}")
                self.queues.append(queue)
                self.pipes.append(receive)
                process.start()
                self.processes.append(process)
                send.close()  # the worker's end: the pipe reads as closed once the worker is gone
        except BaseException:
            self.close(abort=True)  # the ones started so far
            raise

    def describe(self) -> list[dict[str, Any]]:
        """Each worker's ``ShardWriter.describe``, once it has loaded the model."""
        return [self._receive(n, "loading the model") for n in range(len(self.specs))]

    def send(self, worker: int, name: str, ids: list[Any], id_type: str, texts: list[str]) -> Any:
        self.queues[worker].put((name, ids, id_type, texts))
        self.sent += 1
        self.held[worker].append((self.sent, name))
        return self.sent

    def ready(self, handles: list[Any]) -> list[Any]:
        busy = [n for n, held in enumerate(self.held) if held]
        waiting = {self.pipes[n]: n for n in busy} | {self.processes[n].sentinel: n for n in busy}
        done = []
        for n in sorted({waiting[w] for w in wait(list(waiting))}):
            handle, name = self.held[n][0]
            self.replies[handle] = self._receive(n, f"embedding {name}")
            self.held[n].popleft()
            done.append(handle)
        return done

    def result(self, handle: Any) -> dict[str, Any]:
        ok, value = self.replies.pop(handle)
        if not ok:
            raise value
        return dict(value)

    def _receive(self, n: int, doing: str) -> Any:
        """The worker's next reply; a worker that has died instead is reported as such."""
        try:
            return self.pipes[n].recv()
        except (EOFError, OSError):
            pass
        process = self.processes[n]
        process.join(STOP_SECONDS)
        code = process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"exited with status {code}"
        raise WorkerError(f"the worker process {self._where(n)} {how} while {doing}; the shards recorded so far are "
                          "kept: run the same command again to resume") from None

    def _where(self, n: int) -> str:
        gpu = self.specs[n].gpu
        return f"{n} (pid {self.processes[n].pid}{'' if gpu is None else f', GPU {gpu}'})"

    def close(self, abort: bool = False) -> None:
        """Stop the workers: when they have finished what they hold, or at once (``abort``)."""
        for n, process in enumerate(self.processes):
            if abort:
                process.terminate()
                self.queues[n].cancel_join_thread()  # what it never read is dropped
            elif process.is_alive():
                self.queues[n].put(None)
        for process in self.processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for queue, pipe in zip(self.queues, self.pipes, strict=True):
            queue.close()
            pipe.close()


def _serve(spec: WorkerSpec, output: str, queue: Any, pipe: Connection) -> None:
    """A worker process: load the model, say how it runs, then write each shard it is given until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops its workers
    _exit_with_parent()
    if spec.threads:
        os.environ.setdefault("RAYON_NUM_THREADS", str(spec.threads))  # the tokenizer's pool, sized as ORT's
    writer = ShardWriter(spec, output)
    pipe.send(writer.describe())
    while (task := queue.get()) is not None:
        reply: tuple[bool, Any]
        try:
            reply = (True, writer.write(*task))
        except Exception as exc:
            reply = (False, _portable(exc, writer.host))
        pipe.send(reply)
    writer.close()


def _portable(exc: Exception, where: str) -> Exception:
    """``exc`` as the parent can unpickle it; else a ``WorkerError`` saying what it was."""
    if isinstance(exc, EmbedrtError):
        try:
            return pickle.loads(pickle.dumps(exc))  # type: ignore[no-any-return]
        except Exception:
            pass
    return WorkerError(f"a worker on {where} failed: {type(exc).__name__}: {exc}")


def _exit_with_parent() -> None:
    """A worker whose parent is gone (killed, so it could not stop it) exits instead of holding its device."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="embedrt-parent-watch", daemon=True).start()


__all__ = ["Processes", "parse_devices", "run_on_workers", "worker_specs"]
