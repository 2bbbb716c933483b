"""What both transports share: the serving phase, the scheduler once loaded, metrics, model facts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from .. import __version__
from ..core import EmbedRequest, EmbedResult, Scheduler
from ..embedder import Embedder
from ..errors import UnavailableError
from ..info import ModelInfo
from .metrics import ServerMetrics

Phase = Literal["loading", "ready", "draining", "stopped"]


class ServingState:
    """Loading -> ready -> draining -> stopped. Requests are admitted only while ready."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics or ServerMetrics()
        self.phase: Phase = "loading"
        self.embedder: Embedder | None = None
        self.scheduler: Scheduler | None = None
        self.model = ""
        self._listeners: list[Callable[[Phase], Awaitable[None]]] = []

    def on_phase(self, listener: Callable[[Phase], Awaitable[None]]) -> None:
        """Call ``listener`` (on the event loop) on every phase change, e.g. to update gRPC health."""
        self._listeners.append(listener)

    async def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)
        for listener in self._listeners:
            await listener(phase)

    async def loaded(self, embedder: Embedder, scheduler: Scheduler) -> None:
        self.embedder, self.scheduler, self.model = embedder, scheduler, embedder.manifest.name
        await self.set_phase("ready")

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def scheduler_or_raise(self) -> Scheduler:
        if self.phase == "loading" or self.scheduler is None:
            raise UnavailableError("the model is still loading; retry shortly (health reports SERVING when ready)")
        if self.phase != "ready":
            raise UnavailableError("the server is shutting down and takes no new requests; retry on another replica")
        return self.scheduler

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Submit to the core and wait without blocking the loop; cancelling the wait cancels the job."""
        return await asyncio.wrap_future(self.scheduler_or_raise().submit(request))

    def info(self) -> ModelInfo:
        self.scheduler_or_raise()
        assert self.embedder is not None
        return self.embedder.info()


def info_fields(info: ModelInfo) -> dict[str, Any]:
    """The served Info, as gRPC's ``InfoResponse`` fields and HTTP's ``/info`` document alike."""
    low, high = info.dimensions_range
    return {
        "model": info.name, "dimensions": high, "min_dimensions": low, "max_dimensions": high,
        "max_length": info.max_length, "pooling": info.pooling, "normalize": info.normalize,
        "backend": info.backend.backend, "precision": info.backend.precision, "engine_key": info.backend.engine_key,
        "version": __version__, "query_template": info.query_template,
        "default_instruction": info.default_instruction or "",
    }


__all__ = ["Phase", "ServingState", "info_fields"]
