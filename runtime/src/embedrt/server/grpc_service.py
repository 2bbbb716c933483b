"""gRPC transport: proto <-> plain types at the edge, the core in between, errors mapped by ``status_for``.

Two services: ``embedrt.v1.Embedder`` (Embed, EmbedStream, Info) and ``embedrt.v1.Reranker``
(Rerank); a request's ``model`` picks the served model (``ServingState.route``). ``create_server``
builds and binds a server (our services, standard health, reflection) without starting it, so
callers and tests decide when and how it serves. The same handlers answer behind Ray Serve's gRPC
proxy (``ray_grpc``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ..config import ServerConfig
from ..core import EmbedRequest, EmbedResult, Ranking, RerankRequest
from ..errors import ConfigError, InvalidInputError, OverloadedError, RequestTooLargeError, status_for
from .state import ModelEntry, Phase, ServedModel, ServingState, info_fields
from .stubs import RERANKER_SERVICE_NAME, SERVICE_NAME, pb2

_STREAM_WINDOW = 64  # requests one stream may have in flight; past it the stream is flow-controlled
_RETRY_MAX = 0.05  # seconds between admission retries of a stream with nothing of its own in flight


class _Unparsable:
    """Stands in for a request protobuf could not parse (bad UTF-8), so it maps to INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class TooLarge:
    """Stands in for a request over ``--max-message-bytes`` that the transport let through (Serve's gRPC
    proxy takes up to 2 GiB), so it maps to RESOURCE_EXHAUSTED as gRPC's own limit does here."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit

    def error(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request is {self.size} bytes, more than this server's limit of {self.limit} "
                                    "(--max-message-bytes / EMBEDRT_MAX_MESSAGE_BYTES); send fewer or shorter inputs "
                                    "per request")


def _parser(message: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return _Unparsable(str(exc))

    return parse


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _model(msg: Any) -> str | None:
    return msg.model if msg.HasField("model") else None


def to_request(msg: Any, context: grpc.aio.ServicerContext) -> EmbedRequest:
    """EmbedRequest proto -> plain request; the call's deadline becomes the core's deadline."""
    if isinstance(msg, TooLarge):
        raise msg.error()
    if isinstance(msg, _Unparsable):
        raise InvalidInputError(f"invalid `inputs`: every input must be valid UTF-8 text ({msg.reason})")
    return EmbedRequest(
        texts=tuple(msg.inputs),
        instruction=msg.instruction if msg.HasField("instruction") else None,
        query=msg.query,
        dimensions=msg.dimensions if msg.HasField("dimensions") else None,
        normalize=msg.normalize if msg.HasField("normalize") else True,
        truncate=msg.truncate if msg.HasField("truncate") else True,
        deadline=_deadline(context),
    )


def to_rerank_request(msg: Any, context: grpc.aio.ServicerContext) -> RerankRequest:
    """RerankRequest proto -> plain request; the call's deadline becomes the core's deadline."""
    if isinstance(msg, TooLarge):
        raise msg.error()
    if isinstance(msg, _Unparsable):
        raise InvalidInputError(f"invalid request: the query and every document must be valid UTF-8 text "
                                f"({msg.reason})")
    return RerankRequest(
        query=msg.query,
        documents=tuple(msg.documents),
        top_n=msg.top_n if msg.HasField("top_n") else None,
        instruction=msg.instruction if msg.HasField("instruction") else None,
        truncate=msg.truncate if msg.HasField("truncate") else True,
        long_documents=msg.long_documents if msg.HasField("long_documents") else "truncate",
        deadline=_deadline(context),
    )


def to_reply(result: EmbedResult, model: str) -> Any:
    reply = pb2.EmbedResponse(model=model, usage=pb2.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens))
    reply.embeddings.extend(pb2.Embedding(values=row) for row in result.vectors.tolist())
    return reply


def to_rerank_reply(ranking: Ranking, request: RerankRequest, model: str, documents: bool) -> Any:
    reply = pb2.RerankResponse(model=model, usage=pb2.Usage(prompt_tokens=ranking.tokens,
                                                            total_tokens=ranking.tokens))
    reply.results.extend(pb2.RerankResult(index=r.index, relevance_score=r.score, logit=r.logit,
                                          document=request.documents[r.index] if documents else None)
                         for r in ranking.results)
    return reply


class Submitting(ModelEntry, Protocol):
    """A served model a stream can submit to without waiting: ``ServedModel``, or on Ray Serve's gateway a
    model deployment (``ray_serve.RemoteModel``, whose refusals come when the future is awaited)."""

    def submit(self, request: Any) -> Future[Any] | asyncio.Future[Any]: ...


class _Service:
    def __init__(self, state: ServingState[Any]) -> None:  # of ServedModel, or of any ``Submitting``
        self.state = state

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException, started: float) -> None:
        code, _ = status_for(exc)
        self.state.metrics.request("grpc", code, time.perf_counter() - started)
        await context.abort(getattr(grpc.StatusCode, code), str(exc))  # raises: ends the call

    async def _unary(self, context: grpc.aio.ServicerContext, answer: Callable[[], Awaitable[Any]]) -> Any:
        """One unary call: its reply, or its error mapped once; counted either way."""
        started = time.perf_counter()
        try:
            reply = await answer()
        except asyncio.CancelledError:
            self.state.metrics.request("grpc", "CANCELLED", time.perf_counter() - started)
            raise
        except Exception as exc:
            await self._fail(context, exc, started)
        self.state.metrics.request("grpc", "OK", time.perf_counter() - started)
        return reply


class RerankerService(_Service):
    """The ``embedrt.v1.Reranker`` handler: the same core, admission and errors as embeddings."""

    async def Rerank(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def answer() -> Any:
            plain = to_rerank_request(request, context)
            served = self.state.route("rerank", _model(request), "grpc")
            ranking = await self.state.run(served, plain)
            return to_rerank_reply(ranking, plain, served.name, request.return_documents)

        return await self._unary(context, answer)


class EmbedderService(_Service):
    """The ``embedrt.v1.Embedder`` handlers. Thin: convert, call the core, map errors once."""

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def answer() -> Any:
            plain = to_request(request, context)
            served = self.state.route("embed", _model(request), "grpc")
            return to_reply(await self.state.run(served, plain), served.name)

        return await self._unary(context, answer)

    async def _admit(self, request: EmbedRequest, served: Submitting,
                     own: deque[asyncio.Future[EmbedResult]]) -> asyncio.Future[EmbedResult]:
        """Submit one request of a stream; while the server is full, wait instead of failing the stream.

        Back-pressure: the stream is not read while it waits, so HTTP/2 flow control slows its sender.
        It waits for one of its own requests to finish (that frees room), or with nothing of its own
        in flight retries with a short backoff; only the call's deadline ends the wait.
        """
        backoff = 0.001
        while True:
            try:
                self.state.check_ready()
                return asyncio.wrap_future(served.submit(request))
            except OverloadedError:
                left = None if request.deadline is None else request.deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise
                while own and own[0].done():
                    own.popleft()
                if own:
                    await asyncio.wait([own[0]], timeout=left)
                else:
                    await asyncio.sleep(backoff if left is None else min(backoff, left))
                    backoff = min(backoff * 2, _RETRY_MAX)

    async def _result(self, work: asyncio.Future[EmbedResult], request: EmbedRequest, served: Submitting,
                      own: deque[asyncio.Future[EmbedResult]]) -> EmbedResult:
        """The stream's next result. A request refused after admission (``--max-queue-tokens`` is checked
        once it is tokenized) is submitted again after a short backoff instead of ending the stream;
        only the call's deadline ends the retries."""
        backoff = 0.001
        while True:
            try:
                return await work
            except OverloadedError:
                left = None if request.deadline is None else request.deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise
                await asyncio.sleep(backoff if left is None else min(backoff, left))
                backoff = min(backoff * 2, _RETRY_MAX)
                work = await self._admit(request, served, own)

    async def EmbedStream(self, requests: AsyncIterator[Any],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # A reader task submits requests as they arrive (pipelining); replies go out in request order.
        pending: asyncio.Queue[Any] = asyncio.Queue(_STREAM_WINDOW)
        own: deque[asyncio.Future[EmbedResult]] = deque()  # this stream's submitted requests, oldest first

        async def read() -> None:
            try:
                async for msg in requests:
                    request = to_request(msg, context)
                    served = self.state.route("embed", _model(msg), "grpc")
                    submitted = await self._admit(request, served, own)
                    own.append(submitted)
                    await pending.put((time.perf_counter(), submitted, request, served))
            except Exception as exc:
                await pending.put((time.perf_counter(), exc, None, None))
            await pending.put(None)

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        try:
            while (item := await pending.get()) is not None:
                started, work, request, served = item
                if isinstance(work, BaseException):
                    raise work
                reply = to_reply(await self._result(work, request, served, own), served.name)
                self.state.metrics.request("grpc", "OK", time.perf_counter() - started)
                yield reply
        except asyncio.CancelledError:
            self.state.metrics.request("grpc", "CANCELLED", time.perf_counter() - started)
            raise
        except Exception as exc:
            await self._fail(context, exc, started)
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not None and isinstance(item[1], asyncio.Future):
                    item[1].cancel()  # drops queued work before it reaches the backend

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def answer() -> Any:
            return pb2.InfoResponse(**info_fields(self.state.info(_model(request), "grpc")))

        return await self._unary(context, answer)


def generic_handlers(embedder: Any, reranker: Any) -> tuple[grpc.GenericRpcHandler, ...]:
    """One handler per service, calling ``embedder``'s Embed, EmbedStream, Info and ``reranker``'s Rerank
    (also how Serve's gRPC proxy learns the methods and their parsing: ``ray_grpc``)."""
    # Registered by hand rather than with the generated add_*_to_server, only to parse requests
    # ourselves: protobuf rejects bad UTF-8 at parse time, which gRPC would report as INTERNAL.
    parse_embed, serialize = _parser(pb2.EmbedRequest), pb2.EmbedResponse.SerializeToString
    return (
        grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Embed": grpc.unary_unary_rpc_method_handler(embedder.Embed, parse_embed, serialize),
            "EmbedStream": grpc.stream_stream_rpc_method_handler(embedder.EmbedStream, parse_embed, serialize),
            "Info": grpc.unary_unary_rpc_method_handler(embedder.Info, pb2.InfoRequest.FromString,
                                                        pb2.InfoResponse.SerializeToString),
        }),
        grpc.method_handlers_generic_handler(RERANKER_SERVICE_NAME, {
            "Rerank": grpc.unary_unary_rpc_method_handler(reranker.Rerank, _parser(pb2.RerankRequest),
                                                          pb2.RerankResponse.SerializeToString),
        }),
    )


def _handlers(state: ServingState[ServedModel]) -> tuple[grpc.GenericRpcHandler, ...]:
    return generic_handlers(EmbedderService(state), RerankerService(state))


def _health(state: ServingState[ServedModel]) -> HealthServicer:
    health = HealthServicer()
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    async def update(phase: Phase) -> None:
        if phase in ("draining", "stopped"):
            await health.enter_graceful_shutdown()  # NOT_SERVING for good: we never come back from a drain
            return
        # "" is the whole server, as standard probes ask; a service is SERVING once a model of its task is.
        tasks = state.tasks() | {""} if phase == "ready" else set()
        for name, task in (("", ""), (SERVICE_NAME, "embed"), (RERANKER_SERVICE_NAME, "rerank")):
            await health.set(name, serving if task in tasks else not_serving)

    state.on_phase(update)
    return health


def _read_pem(field: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(field, f"{path} is not a PEM file (no -----BEGIN line)")
    return data


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert or not config.tls_key:  # ServerConfig ensures both or neither
        return None
    pair = (_read_pem("server.tls_key", config.tls_key), _read_pem("server.tls_cert", config.tls_cert))
    try:
        return grpc.ssl_server_credentials([pair])
    except Exception as exc:
        raise ConfigError("server.tls_cert", f"gRPC could not use this certificate and key: {exc}") from None


def create_server(state: ServingState[ServedModel], config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """A bound, not yet started gRPC server and its port (useful with ``grpc_port=0``)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", -1),  # replies are bounded by max inputs x dimensions
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ])
    server.add_generic_rpc_handlers(_handlers(state))
    health = _health(state)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if config.reflection:
        names = (SERVICE_NAME, RERANKER_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = f"[{config.host}]:{config.grpc_port}" if ":" in config.host else f"{config.host}:{config.grpc_port}"
    credentials = _credentials(config)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc says only "Failed to bind"; in use, a bad host or a privileged port
        raise ConfigError("server.grpc_port", f"cannot listen on {address} (in use, not an address of this "
                          "machine, or not allowed to this user); pick another port, 0 for any free one") from None
    return server, port


__all__ = ["EmbedderService", "RerankerService", "Submitting", "TooLarge", "create_server", "generic_handlers",
           "to_reply", "to_request", "to_rerank_reply", "to_rerank_request"]
