"""One serving process: both transports, one or more models, the lifecycle from loading to drained.

Order matters. Ports are bound first and health says NOT_SERVING; the models load (side by side)
and each runs a warm-up batch; then health says SERVING. On shutdown: NOT_SERVING, no new
requests, admitted ones finish within the grace period, then the transports stop and the models
are freed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc

from ..config import SchedulerConfig, ServerConfig
from ..embedder import Embedder
from ..reranker import Reranker
from .grpc_service import create_server
from .http_app import HttpServer, create_http_server
from .metrics import ServerMetrics
from .state import ServedModel, ServingState, check_unique_names, serve_model

log = logging.getLogger(__name__)

# Runs on a worker thread: Embedder.load(...) or Reranker.load(...) in practice (the manifest's task).
Loader = Callable[[], Embedder | Reranker]
T = TypeVar("T")
_SEND_WINDOW = 1  # seconds the transports get, after the grace period, to send the answers settled by it


def _off_loop(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` on a daemon thread: unlike asyncio.to_thread, process exit never waits for it, so a
    load or a backend call that hangs cannot hold a drained server past its grace period."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(error: BaseException | None, result: T | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: tuple[BaseException | None, T | None] = (None, fn())
        except BaseException as exc:
            outcome = (exc, None)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


@dataclass(frozen=True)
class Ports:
    grpc: int
    http: int | None


class EmbeddingServer:
    """gRPC + optional HTTP in front of one core per model; all methods run on one event loop.

    ``loader``: one loader, or several (an embedder and a reranker, two embedders, ...); each model
    gets its own core with the ``scheduler`` configuration, so limits such as ``max_queued_requests``
    hold per model.
    """

    def __init__(self, loader: Loader | Sequence[Loader], config: ServerConfig | None = None,
                 scheduler: SchedulerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.scheduler_config = scheduler or SchedulerConfig()
        self.state: ServingState[ServedModel] = ServingState(ServerMetrics())
        self._loaders: tuple[Loader, ...] = tuple(loader) if isinstance(loader, Sequence) else (loader,)
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded: asyncio.Task[None] | None = None
        self.ports = Ports(0, None)

    async def start(self) -> Ports:
        """Bind and start both transports (NOT_SERVING), then load the model in the background."""
        # Both bind before either serves: a port in use (ConfigError) leaves nothing half started.
        grpc_server, grpc_port = create_server(self.state, self.config)
        http_port = None
        if self.config.http_port is not None:
            try:
                self._http, http_port = create_http_server(self.state, self.config)
            except BaseException:
                await grpc_server.stop(None)
                raise
        await self.state.set_phase("loading")  # the standard health servicer starts out SERVING
        await grpc_server.start()
        self._grpc = grpc_server
        if self._http is not None:
            self._tasks.append(asyncio.create_task(self._http.serve_bound()))
        self.ports = Ports(grpc_port, http_port)
        self._loaded = asyncio.create_task(self._load())
        return self.ports

    def _load_model(self, loader: Loader) -> ServedModel:
        model = loader()
        try:
            return serve_model(model, self.scheduler_config, self.state.metrics)
        except BaseException:
            model.close()
            raise

    async def _load(self) -> None:
        loads = [_off_loop(partial(self._load_model, loader), "embedrt-load") for loader in self._loaders]
        outcomes = await asyncio.gather(*loads, return_exceptions=True)
        models = [m for m in outcomes if isinstance(m, ServedModel)]
        try:
            failed = [e for e in outcomes if isinstance(e, BaseException)]
            if failed:
                raise failed[0]
            check_unique_names((m.name, str(m.model.path)) for m in models)  # requests pick models by name
            if self.config.warmup:
                await asyncio.gather(*(asyncio.wrap_future(m.warm_up()) for m in models))
            await self.state.loaded(models)
        except BaseException:
            for served in models:
                served.scheduler.close()
                served.model.close()
            raise

    async def wait_ready(self) -> None:
        """Return once SERVING; raise whatever loading or warming up raised."""
        assert self._loaded is not None, "start() first"
        await asyncio.shield(self._loaded)

    async def shutdown(self, grace: float | None = None) -> bool:
        """Drain and stop within ``grace`` (+ ~1 s to send the last answers, + up to ~1 s each for the
        transports). True if every admitted request was answered within the grace period."""
        grace = self.config.grace_s if grace is None else grace
        await self.state.set_phase("draining")
        served = list(self.state.models.values())
        drains = [_off_loop(partial(s.scheduler.drain, grace), "embedrt-drain") for s in served]
        drained = all(await asyncio.gather(*drains))
        for s in served:
            # What the grace period did not finish fails now with UNAVAILABLE (retryable elsewhere), so
            # each transport answers it with a status instead of gRPC cancelling the call on stop.
            s.scheduler.close(timeout=0)
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()
        window = _SEND_WINDOW
        if self._http is not None:
            self._http.config.timeout_graceful_shutdown = window  # read by uvicorn when it shuts down
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(window)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=window + 1)
        if served:  # each waits for a running backend call, so bounded by the send window too
            closing = {_off_loop(s.model.close, "embedrt-close") for s in served}
            done, _ = await asyncio.wait(closing, timeout=window)
            if len(done) < len(closing):
                log.warning("a backend call still running after the grace period was left to the process exit")
        await self.state.set_phase("stopped")
        if not drained:
            log.warning("the grace period of %.1fs ran out before every admitted request was answered", grace)
        return drained


async def serve_until_signal(server: EmbeddingServer, announce: Callable[[EmbeddingServer], None]) -> None:
    """Start, announce once ready, and on SIGTERM/SIGINT drain within the grace period and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        ready = asyncio.ensure_future(server.wait_ready())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.exception() is None:
            announce(server)
            await stopping
        stopping.cancel()
        if ready.done() and ready.exception() is None:
            log.info("draining (grace %.1fs)", server.config.grace_s)
        await server.shutdown(server.config.grace_s if ready.done() else 0.0)
        if ready.done():
            ready.result()  # a failed load is the command's failure
        else:
            ready.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class ThreadedServer:
    """An ``EmbeddingServer`` on its own event-loop thread: for tests, benchmarks, embedding in apps.

        with ThreadedServer(lambda: Embedder.load(path), ServerConfig(grpc_port=0, http_port=0)) as srv:
            srv.wait_ready(); channel = grpc.insecure_channel(f"127.0.0.1:{srv.ports.grpc}")
    """

    def __init__(self, loader: Loader | Sequence[Loader], config: ServerConfig | None = None,
                 scheduler: SchedulerConfig | None = None) -> None:
        self.server = EmbeddingServer(loader, config, scheduler)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedrt-server", daemon=True)

    @property
    def ports(self) -> Ports:
        return self.server.ports

    @property
    def state(self) -> ServingState[ServedModel]:
        return self.server.state

    def start(self, timeout: float = 30.0) -> Ports:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.wait_ready(), self._loop).result(timeout)

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> bool:
        if not self._thread.is_alive():
            return True
        try:
            return asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._loop.close()

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=5.0)


__all__ = ["EmbeddingServer", "Loader", "Ports", "ThreadedServer", "serve_until_signal"]
