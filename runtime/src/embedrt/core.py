"""The runtime core between transports and the ``Embedder``: admission, cross-request batching.

Transports hand plain ``EmbedRequest`` objects to ``Scheduler.submit`` and get a
``concurrent.futures.Future`` back, so a thread-per-request server and an event loop can both use
it (``asyncio.wrap_future``). Inside, three stages run on their own threads:

1. admission (the caller's thread): cheap validation, then a bound on requests in the system;
   past it ``OverloadedError`` at once, so memory and latency stay bounded under overload;
2. tokenizing (a small pool): ``Embedder.prepare``, then a bound on tokens waiting for the backend;
3. one backend worker per model instance: merges queued requests into one ``Embedder.infer`` call
   by token budget, request count and a maximum wait, then splits the vectors back and finishes
   each request with its own options (``Embedder.finish``).

Cancelled or expired requests are dropped before they reach the backend. A failing batch fails
only its own requests; the worker carries on with the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .config import SchedulerConfig
from .errors import (
    BackendError,
    DeadlineExceededError,
    EmbedrtError,
    InputTooLongError,
    InvalidFieldError,
    InvalidInputError,
    InvalidTextError,
    OverloadedError,
    UnavailableError,
)
from .pooling import check_dimensions
from .prompts import Prompts
from .requests import EmbedRequest, EmbedResult, NoMetrics, SchedulerMetrics
from .tokenizer import Encoded, TokenIdFormat

if TYPE_CHECKING:
    from .embedder import Embedder

log = logging.getLogger(__name__)


class Backend(Protocol):
    """The part of ``Embedder`` the core uses (a fake can stand in for it in unit tests)."""

    def prepare(self, texts: Sequence[str], *, instruction: str | None = None,
                truncate: bool = True) -> list[Encoded]: ...
    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]: ...
    def finish(self, vectors: np.ndarray, norms: np.ndarray, *, dimensions: int | None = None,
               normalize: bool = True) -> np.ndarray: ...


class _Workers:
    """A few daemon threads taking jobs from one queue, first in first out.

    Not a ThreadPoolExecutor: interpreter exit joins those threads, so one long job would hold a
    draining server past its grace period. Jobs still queued at shutdown are the caller's to fail.
    """

    def __init__(self, count: int, name: str, run: Callable[[_Job], None]) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._run = run
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: _Job) -> None:
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
class _Job:
    request: EmbedRequest
    dimensions: int
    future: Future[EmbedResult] = field(default_factory=Future)
    admitted: float = field(default_factory=time.monotonic)
    items: list[Encoded] = field(default_factory=list)
    tokens: int = 0

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline


def _settle(future: Future[EmbedResult], error: BaseException | None = None,
            result: EmbedResult | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled, or failed by close(), meanwhile: nobody is waiting for it
        pass


class Scheduler:
    """Admission control and cross-request dynamic batching for one model instance."""

    def __init__(self, embedder: Backend, config: SchedulerConfig | None = None, *,
                 dimensions_range: tuple[int, int], metrics: SchedulerMetrics | None = None,
                 prompts: Prompts | None = None, token_ids: TokenIdFormat | None = None) -> None:
        self.embedder = embedder
        self.config = config or SchedulerConfig()
        self._range = dimensions_range
        self._metrics: SchedulerMetrics = metrics or NoMetrics()
        self._prompts = prompts or Prompts()
        self._token_ids = token_ids  # None: the model takes text only
        self._cond = threading.Condition()  # an RLock inside: done-callbacks may re-enter
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0
        self._live: set[_Job] = set()  # admitted and not answered
        self._accepting = True
        self._closed = False
        self._prep = _Workers(max(1, self.config.tokenizer_threads), "embedrt-tokenize", self._prepare)
        self._worker = threading.Thread(target=self._run, name="embedrt-backend", daemon=True)
        self._worker.start()

    @classmethod
    def for_embedder(cls, embedder: Embedder, config: SchedulerConfig | None = None,
                     metrics: SchedulerMetrics | None = None) -> Scheduler:
        """A scheduler for a loaded ``Embedder``: dimension range, prompts and special tokens from its artefact."""
        manifest = embedder.manifest
        return cls(embedder, config, dimensions_range=manifest.dimensions_range, metrics=metrics,
                   prompts=manifest.prompts, token_ids=embedder.token_id_format())

    # -- admission --------------------------------------------------------------------------------

    def submit(self, request: EmbedRequest) -> Future[EmbedResult]:
        """Admit ``request`` or raise at once (InvalidInputError, OverloadedError, UnavailableError)."""
        job = _Job(request, self._validate(request))
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

    def _validate(self, request: EmbedRequest) -> int:
        """The checks that cost O(1) per input; each text is checked on a tokenizer thread (``_prepare``)."""
        if request.texts and request.token_ids:
            raise InvalidFieldError("inputs", "send texts or token ids, not both")
        if not request.count:
            raise InvalidFieldError("inputs", "it is empty; send at least one text")
        limit = self.config.max_inputs_per_request
        if request.count > limit:
            raise InvalidFieldError("inputs", f"{request.count} inputs, more than the limit of {limit} per request; "
                                    "split the request")
        if request.token_ids:
            if self._token_ids is None:
                raise InvalidFieldError("inputs", "this model's tokenizer adds special tokens in a way token-id "
                                        "input cannot reproduce; send text")
            if request.instruction is not None or request.query:
                field = "instruction" if request.instruction is not None else "query"
                raise InvalidFieldError(field, "applies to text only: send the query as text to have it formatted")
        else:
            self._check_query(request)
        try:
            return check_dimensions(request.dimensions, self._range)
        except InvalidInputError as exc:
            raise InvalidFieldError("dimensions", str(exc)) from None

    def _check_query(self, request: EmbedRequest) -> None:
        if request.instruction is not None or request.query:  # else not a query: no template applies
            self._prompts.check_instruction(request.instruction)

    def _format(self, request: EmbedRequest) -> tuple[str, ...]:
        if request.instruction is None and not request.query:
            return request.texts
        return tuple(self._prompts.format_query(text, request.instruction) for text in request.texts)

    def _release(self, job: _Job) -> None:
        with self._cond:
            self._live.discard(job)
            self._cond.notify_all()  # drain() waits for the set to empty
            depth, tokens = len(self._live), self._queued_tokens
        self._metrics.queue_depth(depth, tokens)

    # -- tokenizing (pool threads) ----------------------------------------------------------------

    def _prepare(self, job: _Job) -> None:
        if job.future.cancelled():
            return
        request = job.request
        try:
            if request.token_ids:
                assert self._token_ids is not None  # checked on admission
                job.items = self._token_ids.encode(request.token_ids, truncate=request.truncate)
            else:
                job.items = self.embedder.prepare(self._format(request), truncate=request.truncate)
        except InvalidFieldError as exc:
            _settle(job.future, exc)
            return
        except InputTooLongError as exc:
            count = f"at least {exc.tokens}" if exc.at_least else str(exc.tokens)
            _settle(job.future, InvalidFieldError(f"inputs[{exc.index}]", (
                f"{count} tokens, more than the model's limit of {exc.limit}; shorten it or set `truncate` "
                "to true")))
            return
        except InvalidTextError as exc:
            _settle(job.future, InvalidFieldError(f"inputs[{exc.index}]", exc.detail))
            return
        except InvalidInputError as exc:
            _settle(job.future, InvalidFieldError("inputs", str(exc)))
            return
        except Exception as exc:  # a tokenizer crash is our fault, not the client's
            log.exception("tokenizing failed")
            _settle(job.future, exc if isinstance(exc, EmbedrtError) else BackendError(f"tokenizing failed: {exc}"))
            return
        job.tokens = sum(item.length for item in job.items)
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

    def _next_batch(self) -> list[_Job] | None:
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

    def _take(self) -> tuple[list[_Job], list[_Job]]:
        """Pop jobs in arrival order within the budget; a job larger than the budget runs alone."""
        cfg = self.config
        taken: list[_Job] = []
        expired: list[_Job] = []
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

    def _execute(self, batch: list[_Job]) -> None:
        started = time.monotonic()
        items = [item for job in batch for item in job.items]
        for job in batch:
            self._metrics.queued(started - job.admitted)
        try:
            vectors, norms = self.embedder.infer(items)
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
            rows = slice(offset, offset + len(job.items))
            offset = rows.stop
            try:
                out = self.embedder.finish(vectors[rows], norms[rows], dimensions=job.dimensions,
                                           normalize=job.request.normalize)
            except Exception as exc:
                _settle(job.future, exc)
            else:
                _settle(job.future, result=EmbedResult(out, job.tokens, started - job.admitted))

    # -- lifecycle --------------------------------------------------------------------------------

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


__all__ = [
    "EmbedRequest",
    "EmbedResult",
    "Scheduler",
    "SchedulerMetrics",
]
