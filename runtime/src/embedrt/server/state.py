"""What both transports share: the serving phase, the served models and how a request picks one, metrics.

One server serves one or more artefacts, each an embedder or a reranker with its own core
(``Scheduler`` / ``RerankScheduler``). A request picks its model by name (the manifest's), under one
rule for both transports (``ServingState.route``):

- a name the server serves is that model, if its task is the request's (else 400 naming the
  endpoint that takes it);
- otherwise, with one model of the request's task, that model, whatever the name (clients must send
  one, and a one-model server should not care which);
- otherwise, no name: 400 asking for one; an unknown name: 404 naming the models.

The state only needs a model's name, task, ``info()`` and ``run(request)`` (``ModelEntry``): a model
loaded in this process (``ServedModel``) or one served elsewhere (a Ray Serve deployment,
``ray_serve.RemoteModel``) route alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from .. import __version__
from ..config import SchedulerConfig
from ..core import EmbedRequest, RerankRequest, RerankScheduler, Scheduler, TaskScheduler
from ..embedder import Embedder
from ..errors import ArtefactError, InvalidFieldError, ModelNotFoundError, UnavailableError
from ..info import ModelInfo, RerankerInfo
from ..reranker import Reranker
from .metrics import ServerMetrics

Phase = Literal["loading", "ready", "draining", "stopped"]
Transport = Literal["grpc", "http"]
Task = Literal["embed", "rerank"]

_KIND = {"embed": "embedding", "rerank": "rerank"}
# Where each task's requests go, in each transport's terms, for the message that redirects a client.
ENDPOINTS: dict[str, dict[str, str]] = {
    "embed": {"http": "POST /v1/embeddings", "grpc": "embedrt.v1.Embedder/Embed"},
    "rerank": {"http": "POST /v1/rerank (or TEI's POST /rerank)", "grpc": "embedrt.v1.Reranker/Rerank"},
}


class ModelEntry(Protocol):
    """What routing, ``/v1/models``, Info and the transports need of a served model."""

    @property
    def name(self) -> str: ...
    @property
    def task(self) -> Task: ...
    def info(self) -> ModelInfo | RerankerInfo: ...
    async def run(self, request: Any) -> Any: ...


M = TypeVar("M", bound=ModelEntry)


@dataclass(frozen=True)
class ServedModel:
    """One loaded artefact and its core."""

    name: str
    task: Task
    model: Embedder | Reranker
    scheduler: TaskScheduler[Any, Any]

    def submit(self, request: Any) -> Future[Any]:
        return self.scheduler.submit(request)

    async def run(self, request: Any) -> Any:
        """Submit to the core and wait without blocking the loop; cancelling the wait cancels the job."""
        return await asyncio.wrap_future(self.submit(request))

    def warm_up(self) -> Future[Any]:
        """One small request: the first batch pays for allocations and kernel selection."""
        if isinstance(self.model, Reranker):
            prompt = self.model.spec.prompt  # one that needs an instruction and has no default gets one
            needed = prompt.takes_instruction and not prompt.default_instruction
            return self.submit(RerankRequest("warm-up", ("warm-up",), instruction="warm-up" if needed else None))
        return self.submit(EmbedRequest(("warm-up",)))

    def info(self) -> ModelInfo | RerankerInfo:
        return self.model.info()


def serve_model(model: Embedder | Reranker, config: SchedulerConfig, metrics: ServerMetrics) -> ServedModel:
    """A loaded model with its core, its metrics labelled with its name."""
    name, sink = model.manifest.name, metrics.for_model(model.manifest.name)
    if isinstance(model, Reranker):
        return ServedModel(name, "rerank", model, RerankScheduler(model, config, metrics=sink))
    return ServedModel(name, "embed", model, Scheduler.for_embedder(model, config, sink))


def check_unique_names(named: Iterable[tuple[str, str]]) -> None:
    """ArtefactError for two artefacts (name, where) of one name: requests could not tell them apart."""
    seen: dict[str, str] = {}
    for name, where in named:
        if name in seen:
            raise ArtefactError(f"{seen[name]} and {where} are both named {name!r}, and requests pick a model by "
                                "name; serve them from separate servers, or export one under another name "
                                "(embedrt export --name)")
        seen[name] = where


class ServingState(Generic[M]):
    """Loading -> ready -> draining -> stopped. Requests are admitted only while ready."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics or ServerMetrics()
        self.phase: Phase = "loading"
        self.models: dict[str, M] = {}  # in the order the artefacts were given
        self._listeners: list[Callable[[Phase], Awaitable[None]]] = []

    def on_phase(self, listener: Callable[[Phase], Awaitable[None]]) -> None:
        """Call ``listener`` (on the event loop) on every phase change, e.g. to update gRPC health."""
        self._listeners.append(listener)

    async def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)
        for listener in self._listeners:
            await listener(phase)

    async def loaded(self, models: Sequence[M]) -> None:
        """Serve ``models`` (of distinct names, ``check_unique_names``) from now on."""
        self.models = {m.name: m for m in models}
        await self.set_phase("ready")

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def tasks(self) -> set[str]:
        return {m.task for m in self.models.values()}

    def check_ready(self) -> None:
        if self.phase == "loading" or not self.models:
            raise UnavailableError("the model is still loading; retry shortly (health reports SERVING when ready)")
        if self.phase != "ready":
            raise UnavailableError("the server is shutting down and takes no new requests; retry on another replica")

    def route(self, task: Task | None, name: str | None, transport: Transport) -> M:
        """The model a request of ``task`` (None: any, as for Info) naming ``name`` goes to (module docstring)."""
        self.check_ready()
        name = name or None
        if name is not None and name in self.models:
            served = self.models[name]
            if task is None or served.task == task:
                return served
            raise InvalidFieldError("model", f"{name} is a {_KIND[served.task]} model; send its requests to "
                                    f"{ENDPOINTS[served.task][transport]}")
        candidates = [m for m in self.models.values() if task is None or m.task == task]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            assert task is not None
            others = sorted({m.task for m in self.models.values()})
            raise InvalidFieldError("model", f"this server serves no {_KIND[task]} model, only {self._listing()}; "
                                    f"send their requests to {' or '.join(ENDPOINTS[t][transport] for t in others)}")
        kind = f"{_KIND[task]} models" if task else "models"
        if name is None:
            raise InvalidFieldError("model", f"this server serves several {kind} ({self._listing(task)}); name one")
        raise ModelNotFoundError("model", f"this server serves no model {name!r}; its {kind} are "
                                 f"{self._listing(task)}")

    def _listing(self, task: str | None = None) -> str:
        return ", ".join(m.name if task else f"{m.name} ({m.task})" for m in self.models.values()
                         if task is None or m.task == task)

    async def run(self, served: M, request: Any) -> Any:
        """Run ``request`` on ``served``; cancelling the wait cancels the job."""
        return await served.run(request)

    def info(self, name: str | None, transport: Transport) -> ModelInfo | RerankerInfo:
        return self.route(None, name, transport).info()


def info_fields(info: ModelInfo | RerankerInfo) -> dict[str, Any]:
    """A served model's Info, as gRPC's ``InfoResponse`` fields and HTTP's ``/info`` document alike."""
    common = {"model": info.name, "max_length": info.max_length, "backend": info.backend.backend,
              "precision": info.backend.precision, "engine_key": info.backend.engine_key, "version": __version__,
              "default_instruction": info.default_instruction or ""}
    if isinstance(info, RerankerInfo):
        return {**common, "task": "rerank", "pair_encoding": info.pair_encoding, "activation": info.activation}
    low, high = info.dimensions_range
    return {**common, "task": "embed", "dimensions": high, "min_dimensions": low, "max_dimensions": high,
            "pooling": info.pooling, "normalize": info.normalize, "query_template": info.query_template}


__all__ = ["ENDPOINTS", "ModelEntry", "Phase", "ServedModel", "ServingState", "check_unique_names", "info_fields",
           "serve_model"]
