"""gRPC on Ray Serve: ``embedrt.v1.Embedder`` and ``embedrt.v1.Reranker`` through Serve's gRPC proxy.

Serve's proxy (one per node, started by ``serve.start(grpc_options=grpc_options(port))``) parses each
call with our parsers (``add_services_to_server``), routes it to an application (the only one, or
the one named by the call's ``application`` metadata) and calls the method of that application's
ingress deployment named after the RPC. ``GrpcIngress`` gives the ingress those methods: each runs
``embedrt serve``'s own handlers (``grpc_service``) over the ingress's ``ServingState``, so routing
by ``model``, validation, status codes and messages are the same. ``EmbedStream`` too: Serve 2.60's
proxy carries bidirectional streams (each message the replica reads is one call back to the proxy).

Not carried over (docs/ray.md, "gRPC"): TLS (the proxy has none), the standard health service, the
call's deadline (the proxy does not pass it on, so queued work is dropped only when the call is
cancelled), and ``--host`` (the proxy listens on every interface).

This module is imported by Serve's proxies (``grpc_servicer_functions``), so it imports no Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from ..config import ServerConfig
from .grpc_service import EmbedderService, RerankerService, TooLarge, generic_handlers
from .state import ServingState
from .stubs import pb2

# Serve's grpc_servicer_functions: registers our services on each proxy (its handlers then route to replicas)
SERVICER_FUNCTIONS = ("embedrt.server.ray_grpc.add_services_to_server",)


def add_services_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """For Serve's proxy: the two services with ``embedrt serve``'s request parsing (bad UTF-8 is
    INVALID_ARGUMENT, not INTERNAL). Serve replaces the handlers themselves with its routing, and
    rewrites only the first handler of each registration, hence one call per service."""
    for handler in generic_handlers(servicer, servicer):
        server.add_generic_rpc_handlers((handler,))


def grpc_options(port: int, reflection: bool = True) -> dict[str, Any]:
    """``serve.start``'s ``grpc_options`` for our services on ``port`` (every interface, every proxy)."""
    return {"port": port, "grpc_servicer_functions": list(SERVICER_FUNCTIONS), "enable_reflection": reflection}


class Aborted(Exception):
    """A call ended with a status set on Serve's gRPC context (the handlers' ``context.abort``)."""


class ServeContext:
    """What the handlers use of a ``grpc.aio.ServicerContext``, over Serve's ``RayServegRPCContext``."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def time_remaining(self) -> None:
        return None  # Serve's proxy does not pass the call's deadline on

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        # Serve's proxy sends the code and details set here instead of OK.
        self.context.set_code(code)
        self.context.set_details(details)
        raise Aborted(details)


class GrpcIngress:
    """The RPCs as methods of an application's ingress deployment (``ModelIngress``, ``Gateway``), which
    set ``state`` (the models it serves) and ``server`` (the limits) before Serve routes to it."""

    state: ServingState[Any]
    server: ServerConfig

    async def Embed(self, request: Any, grpc_context: Any) -> Any:
        return await self._unary(EmbedderService(self.state).Embed, request, grpc_context, pb2.EmbedResponse)

    async def Info(self, request: Any, grpc_context: Any) -> Any:
        return await self._unary(EmbedderService(self.state).Info, request, grpc_context, pb2.InfoResponse)

    async def Rerank(self, request: Any, grpc_context: Any) -> Any:
        return await self._unary(RerankerService(self.state).Rerank, request, grpc_context, pb2.RerankResponse)

    async def EmbedStream(self, requests: AsyncIterator[Any], grpc_context: Any) -> AsyncIterator[Any]:
        """Replies in request order, as in ``embedrt serve``. A failure ends the stream by raising ``Aborted``
        (a generator cannot hand Serve a status otherwise), so Serve also logs it with a traceback."""
        async for reply in EmbedderService(self.state).EmbedStream(self._limited(requests), ServeContext(grpc_context)):
            yield reply

    async def _unary(self, handler: Callable[[Any, Any], Awaitable[Any]], request: Any, grpc_context: Any,
                     empty: Callable[[], Any]) -> Any:
        try:
            return await handler(self._within_limit(request), ServeContext(grpc_context))
        except Aborted:
            return empty()  # the status set on grpc_context is what the client gets

    def _within_limit(self, request: Any) -> Any:
        size = request.ByteSize() if hasattr(request, "ByteSize") else 0  # not a stand-in (bad UTF-8)
        return TooLarge(size, self.server.max_message_bytes) if size > self.server.max_message_bytes else request

    async def _limited(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield self._within_limit(request)


__all__ = ["SERVICER_FUNCTIONS", "Aborted", "GrpcIngress", "ServeContext", "add_services_to_server", "grpc_options"]
