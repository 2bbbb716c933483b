"""The serving layer as a Ray Serve application: replicas of each model across a Ray cluster.

    from ray import serve
    from embedrt.config import RayServeConfig
    from embedrt.server.ray_serve import build_app
    serve.run(build_app(["/shared/engines/qwen3-embedding-0.6b"], RayServeConfig(replicas=2)), route_prefix="/")

or from a Serve config file / ``serve run``: ``embedrt.server.ray_serve:app_builder`` with ``args``
spelled as ``embedrt serve``'s flags (``{"artefact": [...], "replicas": "auto", "max-batch-tokens": 8192}``).
``embedrt serve ART --ray`` runs the same application (``ray_run``).

A ``ModelReplica`` deployment per artefact, named after the model: each replica loads the model
once and runs it behind its own core (``TaskScheduler``), which merges the requests Serve hands
that replica (up to ``max_ongoing_requests`` at once) into shared backend calls, as in ``embedrt
serve``. Replicas are fixed or autoscaled on ongoing requests, and take ``num_cpus`` / ``num_gpus``
(a fraction shares a GPU). Each replica also serves ``embedrt serve``'s HTTP app (``create_app``:
body limits, parsing, the error mapping and shape) over its own model, and its gRPC services where
Serve's gRPC proxy is started with them (``ray_grpc``):

- one artefact: the model's replicas are the application's ingress; Serve's proxy hands each HTTP
  request (and gRPC call) straight to a replica (no hop between processes: about 1.5x the
  requests/s of the gateway on a 2-core machine, docs/ray.md);
- several: a ``Gateway`` deployment is the ingress, the same HTTP app and gRPC services over a
  ``ServingState`` whose models are handles to the model deployments (``RemoteModel``), so a
  request's ``model`` picks its deployment as it picks a model in ``embedrt serve``.

Behind the gateway a client's error (``EmbedrtError``) comes back from a replica as a value
(``Refused``), not as a raised exception, so it costs no traceback and keeps its type and field;
Serve's own failures map to the server's errors (a lost replica: 503, retryable; Serve's queue
full: 429). Where the replicas are the ingress, Serve's proxy answers those two itself (500 and
429 with a plain-text body).

Importing this module imports Ray: the runtime does only when asked (``--ray``, or this import).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from ..config import BackendConfig, BatchingConfig, RayServeConfig, SchedulerConfig, ServerConfig
from ..embedder import Embedder
from ..errors import BackendError, EmbedrtError, OverloadedError, UnavailableError
from ..info import ModelInfo, RerankerInfo
from ..manifest import load_manifest
from ..remote import absolute
from ..reranker import Reranker
from .http_app import create_app
from .metrics import ServerMetrics
from .ray_grpc import GrpcIngress
from .state import ServedModel, ServingState, Task, check_unique_names, serve_model

APP_NAME = "embedrt"  # the Serve application `embedrt serve --ray` runs (and deletes on exit)
GATEWAY = "gateway"  # its ingress deployment; each model's deployment is named after the model
_QUIET = {"enable_access_log": False}  # no log line per request (the single-process server logs none either)
_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


@dataclass(frozen=True)
class ModelOptions:
    """How every replica loads its model: what ``embedrt serve`` takes besides the artefact.

    ``backend_config`` None: the defaults, with ``intra_op_threads`` set to the replica's CPUs
    (``RayServeConfig.threads``), not to the CPUs of the machine that builds the application.
    """

    backend: str = "auto"
    precision: str = "auto"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    backend_config: BackendConfig | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    warmup: bool = True  # one batch before the replica reports healthy
    grace_s: float = 30.0  # a replica being stopped finishes admitted requests within this


def _listed(name: str, task: Task, info: ModelInfo | RerankerInfo) -> tuple[str, Task, str, str]:
    return name, task, info.backend.backend, info.backend.precision


@dataclass(frozen=True)
class Refused:
    """A client's error, returned by a replica instead of raised (see the module docstring)."""

    error: EmbedrtError


def load_model(artefact: str, options: ModelOptions) -> Embedder | Reranker:
    """The artefact as its manifest's task says (what ``embedrt serve`` loads), with ``options``."""
    kind = Reranker if load_manifest(artefact).task == "rerank" else Embedder
    return kind.load(artefact, options.backend, precision=options.precision, batching=options.batching,
                     backend_config=options.backend_config or BackendConfig())


class ModelReplica:
    """One replica of one model: the model loaded once, its core batching what Serve hands this replica."""

    def __init__(self, artefact: str, options: ModelOptions, server: ServerConfig) -> None:
        self.options, self.server = options, server
        self.metrics = ServerMetrics()  # this replica's: requests, and its core's batches and queue
        model = load_model(artefact, options)
        try:
            self.served: ServedModel = serve_model(model, options.scheduler, self.metrics)
            if options.warmup:
                self.served.warm_up().result()
        except BaseException:
            model.close()
            raise

    def describe(self) -> tuple[str, Task, ModelInfo | RerankerInfo]:
        return self.served.name, self.served.task, self.served.info()

    def models(self) -> list[tuple[str, Task, str, str]]:
        """As ``Gateway.models``, for an application whose ingress this is."""
        return [_listed(self.served.name, self.served.task, self.served.info())]

    async def run(self, request: Any) -> Any:
        """The request's result, or ``Refused`` for a client's error; cancelling the call drops the job."""
        try:
            return await self.served.run(request)
        except EmbedrtError as exc:
            return Refused(exc)

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes it replace the replica."""
        if not self.served.scheduler.alive():
            raise RuntimeError(f"{self.served.name}: the backend worker thread has stopped")

    def __del__(self) -> None:
        # Serve stops routing here and waits for ongoing requests before this; drain what is left.
        served = getattr(self, "served", None)
        if served is not None:
            served.scheduler.drain(self.options.grace_s)
            served.scheduler.close(timeout=0)
            served.model.close()


@serve.ingress()
class ModelIngress(GrpcIngress, ModelReplica):
    """A ``ModelReplica`` that is also the application's ingress (HTTP, and gRPC: ``GrpcIngress``): an
    application of one model.

    (Serve allows one ingress per application, hence a class of its own.)"""

    async def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve once, after ``__init__``: ``embedrt serve``'s HTTP app over this replica's model."""
        self.state: ServingState[ServedModel] = ServingState(self.metrics)
        await self.state.loaded([self.served])
        return create_app(self.state, self.server)


@dataclass(frozen=True)
class RemoteModel:
    """A model served by a ``ModelReplica`` deployment, as the gateway's ``ServingState`` routes to it."""

    name: str
    task: Task
    described: ModelInfo | RerankerInfo  # as the first replica to answer reported it
    handle: DeploymentHandle

    def info(self) -> ModelInfo | RerankerInfo:
        return self.described

    def submit(self, request: Any) -> asyncio.Future[Any]:
        """``run`` as a task, for a stream (``EmbedStream``) that keeps several requests in flight; a
        refusal (overload) comes when it is awaited, and the stream then submits it again."""
        return asyncio.ensure_future(self.run(request))

    async def run(self, request: Any) -> Any:
        try:
            outcome = await self.handle.run.remote(request)
        except BackPressureError:
            raise OverloadedError(f"{self.name}: every replica is busy and Serve's queue for them is full; retry "
                                  "with backoff or add replicas (--replicas, --max-replicas)") from None
        except _LOST as exc:
            raise UnavailableError(f"{self.name}: the replica running this request was lost ({type(exc).__name__}); "
                                   "retry, Serve is replacing it") from None
        except RayTaskError as exc:
            raise BackendError(f"{self.name}: the replica failed on this request: {exc.cause!r}") from None
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome


@serve.ingress()
class Gateway(GrpcIngress):
    """The ingress: ``embedrt serve``'s HTTP app and gRPC services (``GrpcIngress``) over the model deployments."""

    def __init__(self, models: Sequence[DeploymentHandle], server: ServerConfig) -> None:
        self.handles, self.server = list(models), server
        self.state: ServingState[RemoteModel] = ServingState(ServerMetrics())

    async def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve once, after ``__init__``: learn each model from one of its replicas."""
        described = await asyncio.gather(*(handle.describe.remote() for handle in self.handles))
        await self.state.loaded([RemoteModel(name, task, info, handle)
                                 for (name, task, info), handle in zip(described, self.handles, strict=True)])
        return create_app(self.state, self.server)

    def models(self) -> list[tuple[str, Task, str, str]]:
        """(name, task, backend, precision) of each model, for the ready line of ``embedrt serve --ray``."""
        return [_listed(m.name, m.task, m.info()) for m in self.state.models.values()]


def replica_options(config: RayServeConfig, options: ModelOptions) -> dict[str, Any]:
    """The Serve deployment options of each model's replicas (``serve.deployment(...).options(**these)``)."""
    actor: dict[str, Any] = {"num_cpus": config.cpus_per_replica}
    if config.gpus_per_replica:
        actor["num_gpus"] = config.gpus_per_replica
    scaling: dict[str, Any] = {"num_replicas": config.replicas}
    if config.autoscaling:
        scaling = {"autoscaling_config": {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                          "target_ongoing_requests": config.target_ongoing_requests}}
    return {**scaling, "ray_actor_options": actor, "max_ongoing_requests": config.max_ongoing_requests,
            # requests waiting for a replica: at most --max-queue (per caller), past it 429 as in one process
            "max_queued_requests": options.scheduler.max_queued_requests,
            "backpressure_config": {"status_code": 429, "retry_after_s": 1},
            "graceful_shutdown_timeout_s": options.grace_s + 1, "logging_config": _QUIET,
            # a replica that died is noticed by the next health check: within 2 s, not Serve's default 10 s
            "health_check_period_s": 2.0}


def build_app(artefacts: Sequence[str | Path], config: RayServeConfig | None = None,
              options: ModelOptions | None = None, server: ServerConfig | None = None) -> serve.Application:
    """The Serve application: a ``ModelReplica`` deployment per artefact, the ingress itself when there
    is one, else behind one ``Gateway``.

    ``artefacts`` must be paths every Ray node can read (a shared filesystem), or URLs each can fetch
    (``remote.py``): each replica loads its model from there. ``server`` gives the limits
    (``max_message_bytes``, ``body_timeout_s``); where Serve listens is Serve's ``http_options`` and
    ``grpc_options`` (``serve.start``; for gRPC, ``ray_grpc.grpc_options``).
    """
    config = config or RayServeConfig()
    options = options or ModelOptions()
    if options.backend_config is None:
        options = dataclasses.replace(options, backend_config=BackendConfig(intra_op_threads=config.threads))
    paths = [absolute(a) for a in artefacts]  # a URL as it is: each replica fetches its node's copy
    if not paths:
        raise EmbedrtError("give at least one artefact directory")
    names = [(load_manifest(p).name, p) for p in paths]
    check_unique_names(names)
    server = server or ServerConfig()
    kind = ModelIngress if len(names) == 1 else ModelReplica
    replica = serve.deployment()(kind).options(**replica_options(config, options))
    models = [replica.options(name=name).bind(path, options, server) for name, path in names]
    if len(models) == 1:
        return models[0]
    gateway = serve.deployment()(Gateway).options(
        name=GATEWAY, num_replicas=1, ray_actor_options={"num_cpus": 0}, logging_config=_QUIET,
        # the gateway holds every request in flight while the models work: bounded by the models' queues
        max_ongoing_requests=len(models) * (options.scheduler.max_queued_requests
                                            + config.max_ongoing_requests * config.most_replicas))
    return gateway.bind(models, server)


def app_builder(args: Mapping[str, Any]) -> serve.Application:
    """For ``serve run embedrt.server.ray_serve:app_builder artefact=/shared/a,/shared/b replicas=2`` and
    Serve config files: ``args`` are ``embedrt serve``'s flags without the dashes (``max-batch-tokens``),
    ``artefact`` a list or a comma-separated string; ``EMBEDRT_*`` variables apply as they do there."""
    from ..cli.serve import ray_app, settings_from_mapping  # the one mapping from flags onto the dataclasses

    return ray_app(settings_from_mapping(args))  # type: ignore[no-any-return]


__all__ = ["APP_NAME", "GATEWAY", "Gateway", "ModelIngress", "ModelOptions", "ModelReplica", "Refused", "RemoteModel",
           "app_builder", "build_app", "load_model", "replica_options"]
