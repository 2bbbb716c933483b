"""The runtime core between transports and the models: admission, cross-request batching.

Transports hand plain requests (``EmbedRequest``, ``RerankRequest``) to ``submit`` and get a
``concurrent.futures.Future`` back, so a thread-per-request server and an event loop can both use
it (``asyncio.wrap_future``). Inside, three stages run on their own threads:

1. admission (the caller's thread): cheap validation, then a bound on requests in the system;
   past it ``OverloadedError`` at once, so memory and latency stay bounded under overload;
2. tokenizing (a small pool): the request is prepared, then a bound on tokens waiting for the backend;
3. one backend worker per model instance: merges queued requests into one backend call by token
   budget, request count and a maximum wait, then splits the outputs back and finishes each request
   with its own options.

What those steps mean for one kind of request is its ``Head`` (``heads.py``: validate, tokenize,
infer, finish); ``TaskScheduler`` is the same machinery for any head. ``Scheduler`` is the core of an
embedding model, ``RerankScheduler`` of a reranker.

Cancelled or expired requests are dropped before they reach the backend. A failing batch fails
only its own requests; the worker carries on with the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .config import SchedulerConfig
from .errors import (
    BackendError,
    DeadlineExceededError,
    EmbedrtError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from .heads import EmbedHead, EmbedModel, Head, Prepared, RerankHead, RerankModel
from .prompts import Prompts
from .requests import EmbedRequest, EmbedResult, NoMetrics, Ranking, RerankRequest, SchedulerMetrics
from .tokenizer import TokenIdFormat

if TYPE_CHECKING:
    from .embedder import Embedder
    from .reranker import Reranker

log = logging.getLogger(__name__)


class Timed(Protocol):
    """What the core reads of every request itself: when its answer stops being of use."""

    @property
    def deadline(self) -> float | None: ...


Req = TypeVar("Req", bound=Timed)
Res = TypeVar("Res")


class _Workers:
    """A few daemon threads taking jobs from one queue, first in first out.

    Not a ThreadPoolExecutor: interpreter exit joins those threads, so one long job would hold a
    draining server past its grace period. Jobs still queued at shutdown are the caller's to fail.
    """

    def __init__(self, count: int, name: str, run: Callable[[Any], None]) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._run = run
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Any) -> None:
        if self._closed:
            raise RuntimeError("the workers are shut down")
        self._jobs.put(job)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None and not self._closed:
            self._run(job)

    def shutdown(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)


@dataclass(eq=False)
class _Job(Generic[Req, Res]):
    request: Req
    future: Future[Res] = field(default_factory=Future)
    admitted: float = field(default_factory=time.monotonic)
    prepared: Prepared = field(default_factory=lambda: Prepared([]))

    @property
    def tokens(self) -> int:
        return self.prepared.tokens

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline


def _settle(future: Future[Any], error: BaseException | None = None, result: Any = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled, or failed by close(), meanwhile: nobody is waiting for it
        pass


class TaskScheduler(Generic[Req, Res]):
    """Admission control and cross-request dynamic batching for one model instance and its ``Head``."""

    def __init__(self, head: Head[Req, Res], config: SchedulerConfig | None = None,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.head = head
        self.config = config or SchedulerConfig()
        self._metrics: SchedulerMetrics = metrics or NoMetrics()
        self._cond = threading.Condition()  # an RLock inside: done-callbacks may re-enter
        self._queue: deque[_Job[Req, Res]] = deque()
        self._queued_tokens = 0
        self._live: set[_Job[Req, Res]] = set()  # admitted and not answered
        self._accepting = True
        self._closed = False
        self._prep = _Workers(max(1, self.config.tokenizer_threads), "embedrt-tokenize", self._prepare)
        self._worker = threading.Thread(target=self._run, name="embedrt-backend", daemon=True)
        self._worker.start()

    # -- admission --------------------------------------------------------------------------------

    def submit(self, request: Req) -> Future[Res]:
        """Admit ``request`` or raise at once (InvalidInputError, OverloadedError, UnavailableError)."""
        self.head.check(request, self.config.max_inputs_per_request)
        job: _Job[Req, Res] = _Job(request)
        with self._cond:
            if not self._accepting:
                raise UnavailableError("the server is shutting down and takes no new requests; retry elsewhere")
            if len(self._live) >= self.config.max_queued_requests:
                raise OverloadedError(f"{len(self._live)} requests are already queued (the limit is "
                                      f"{self.config.max_queued_requests}); retry with backoff or add replicas")
            self._live.add(job)
        job.future.add_done_callback(lambda _: self._release(job))
        try:
            self._prep.submit(job)
        except RuntimeError:  # close() shut the pool between the check above and here
            _settle(job.future, UnavailableError("the server is shutting down and takes no new requests"))
        return job.future

    def _release(self, job: _Job[Req, Res]) -> None:
        with self._cond:
            self._live.discard(job)
            self._cond.notify_all()  # drain() waits for the set to empty
            depth, tokens = len(self._live), self._queued_tokens
        self._metrics.queue_depth(depth, tokens)

    # -- tokenizing (pool threads) ----------------------------------------------------------------

    def _prepare(self, job: _Job[Req, Res]) -> None:
        if job.future.cancelled():
            return
        try:
            job.prepared = self.head.prepare(job.request)
        except InvalidInputError as exc:  # the head names the request's field at fault
            _settle(job.future, exc)
            return
        except Exception as exc:  # a tokenizer crash is our fault, not the client's
            log.exception("tokenizing failed")
            _settle(job.future, exc if isinstance(exc, EmbedrtError) else BackendError(f"tokenizing failed: {exc}"))
            return
        with self._cond:
            over = self._queued_tokens > 0 and self._queued_tokens + job.tokens > self.config.max_queued_tokens
            if not over:
                self._queue.append(job)
                self._queued_tokens += job.tokens
                self._cond.notify_all()
            depth, tokens = len(self._live), self._queued_tokens
        if over:
            _settle(job.future, OverloadedError(
                f"{tokens} tokens are already waiting for the backend (the limit is "
                f"{self.config.max_queued_tokens}); retry with backoff or add replicas"))
        self._metrics.queue_depth(depth, tokens)

    # -- the backend worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _full(self) -> bool:
        cfg = self.config
        return self._queued_tokens >= cfg.max_batch_tokens or len(self._queue) >= cfg.max_batch_requests

    def _next_batch(self) -> list[_Job[Req, Res]] | None:
        """Wait for work, then for company (up to max_wait_us past the oldest job), then take a batch."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            until = self._queue[0].admitted + self.config.max_wait_us / 1e6
            # While draining nothing new will join: waiting would only delay shutdown.
            while self._accepting and not self._closed and not self._full():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken, expired = self._take()
            depth, tokens = len(self._live), self._queued_tokens
        for job in expired:
            _settle(job.future, DeadlineExceededError("the request's deadline passed while it was queued"))
        self._metrics.queue_depth(depth, tokens)
        return taken

    def _take(self) -> tuple[list[_Job[Req, Res]], list[_Job[Req, Res]]]:
        """Pop jobs in arrival order within the budget; a job larger than the budget runs alone."""
        cfg = self.config
        taken: list[_Job[Req, Res]] = []
        expired: list[_Job[Req, Res]] = []
        tokens = 0
        now = time.monotonic()
        while self._queue and len(taken) < cfg.max_batch_requests:
            job = self._queue[0]
            if taken and tokens + job.tokens > cfg.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= job.tokens
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled by the client: dropped before it costs backend time
            if job.expired(now):
                expired.append(job)
                continue
            taken.append(job)
            tokens += job.tokens
        return taken, expired

    def _execute(self, batch: list[_Job[Req, Res]]) -> None:
        started = time.monotonic()
        items = [item for job in batch for item in job.prepared.items]
        for job in batch:
            self._metrics.queued(started - job.admitted)
        try:
            outputs = self.head.infer(items)
        except Exception as exc:
            log.exception("the backend failed on a batch of %d requests (%d texts)", len(batch), len(items))
            error = exc if isinstance(exc, EmbedrtError) else BackendError(
                f"the backend failed on this request's batch: {type(exc).__name__}: {exc}")
            for job in batch:
                _settle(job.future, error)
            return
        self._metrics.batch(len(batch), len(items), sum(job.tokens for job in batch), time.monotonic() - started)
        offset = 0
        for job in batch:
            rows = slice(offset, offset + len(job.prepared.items))
            offset = rows.stop
            try:
                result = self.head.finish(job.request, job.prepared, tuple(out[rows] for out in outputs),
                                          started - job.admitted)
            except Exception as exc:
                _settle(job.future, exc)
            else:
                _settle(job.future, result=result)

    # -- lifecycle --------------------------------------------------------------------------------

    def alive(self) -> bool:
        """False once closed, or if the backend worker thread has died: nothing queued would run."""
        return not self._closed and self._worker.is_alive()

    def depth(self) -> tuple[int, int]:
        """(requests admitted and not answered, tokens waiting for the backend)."""
        with self._cond:
            return len(self._live), self._queued_tokens

    def drain(self, timeout: float | None = None) -> bool:
        """Stop admitting; wait until every admitted request is answered. False if time ran out."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._live, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads; requests still unanswered fail with UnavailableError. Idempotent."""
        with self._cond:
            self._accepting = False
            self._closed = True
            self._cond.notify_all()
        self._prep.shutdown()
        self._worker.join(timeout)
        with self._cond:
            leftover = list(self._live)
            self._queue.clear()
            self._queued_tokens = 0
        for job in leftover:
            _settle(job.future, UnavailableError("the server stopped before this request ran"))



class Scheduler(TaskScheduler[EmbedRequest, EmbedResult]):
    """The core of an embedding model: ``EmbedRequest`` in, ``EmbedResult`` out (``heads.EmbedHead``)."""

    def __init__(self, embedder: EmbedModel, config: SchedulerConfig | None = None, *,
                 dimensions_range: tuple[int, int], metrics: SchedulerMetrics | None = None,
                 prompts: Prompts | None = None, token_ids: TokenIdFormat | None = None) -> None:
        self.embedder = embedder
        super().__init__(EmbedHead(embedder, dimensions_range, prompts, token_ids), config, metrics)

    @classmethod
    def for_embedder(cls, embedder: Embedder, config: SchedulerConfig | None = None,
                     metrics: SchedulerMetrics | None = None) -> Scheduler:
        """A scheduler for a loaded ``Embedder``: dimension range, prompts and special tokens from its artefact."""
        manifest = embedder.manifest
        return cls(embedder, config, dimensions_range=manifest.dimensions_range, metrics=metrics,
                   prompts=manifest.prompts, token_ids=embedder.token_id_format())


class RerankScheduler(TaskScheduler[RerankRequest, Ranking]):
    """The core of a reranker: ``RerankRequest`` in, ``Ranking`` out (``heads.RerankHead``). The pairs of
    concurrent requests share backend calls; ``max_inputs_per_request`` bounds documents per request."""

    def __init__(self, reranker: RerankModel | Reranker, config: SchedulerConfig | None = None, *,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.reranker = reranker
        config = config or SchedulerConfig()
        # "max_window" makes pairs of windows: the same limit bounds them, so one request cannot hold the backend
        super().__init__(RerankHead(reranker, max_pairs=config.max_inputs_per_request), config, metrics)


__all__ = [
    "EmbedRequest",
    "EmbedResult",
    "Ranking",
    "RerankRequest",
    "RerankScheduler",
    "Scheduler",
    "SchedulerMetrics",
    "TaskScheduler",
]
