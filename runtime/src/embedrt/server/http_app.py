"""OpenAI-compatible HTTP transport (FastAPI on uvicorn): /v1/embeddings, /health, /metrics.

Like the gRPC side it only converts JSON <-> plain types and maps errors with ``status_for``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import ServerConfig
from ..core import EmbedRequest, EmbedResult, InvalidFieldError
from ..errors import InvalidInputError, status_for
from .state import ServingState

# OpenAI's error "type" for each HTTP status that status_for can produce (presentation only).
_ERROR_TYPES = {400: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
                500: "server_error"}
_FIELD_NAMES = {"inputs": "input"}  # the core names gRPC fields; OpenAI calls the list `input`


class EmbeddingsBody(BaseModel):
    """POST /v1/embeddings, as OpenAI defines it, plus embedrt's optional extras."""

    model_config = ConfigDict(extra="ignore")  # e.g. `user`: accepted, unused

    input: str | list[str]
    model: str | None = None  # informational: this server serves one model, whatever the name
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    instruction: str | None = None  # embedrt: query task for instruction-tuned models
    query: bool = False
    normalize: bool = True
    truncate: bool = True

    def to_request(self) -> EmbedRequest:
        texts = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        return EmbedRequest(texts=texts, instruction=self.instruction, query=self.query,
                            dimensions=self.dimensions, normalize=self.normalize, truncate=self.truncate)


def _embedding(row: Any, encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
        data = row.astype("<f4", copy=False).tobytes()
        return base64.b64encode(data).decode("ascii")
    return row.tolist()


def to_body(result: EmbedResult, model: str, encoding: str) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": _embedding(row, encoding)}
            for i, row in enumerate(result.vectors)]
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _invalid_body(exc: ValidationError) -> InvalidInputError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    if where.startswith("input."):  # pydantic reports each branch of `str | list[str]`
        where = "input"
    return InvalidInputError(f"invalid `{where}`: {first.get('msg', 'invalid value')} "
                             "(expected `input` as a string or a list of strings)")


def error_response(exc: BaseException) -> Response:
    code, status = status_for(exc)
    message, param = str(exc), None
    if isinstance(exc, InvalidFieldError):
        base, _, rest = exc.field.partition("[")
        param = _FIELD_NAMES.get(base, base) + (f"[{rest}" if rest else "")
        message = f"invalid `{param}`: {exc.detail}"
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(json.dumps(body), status, headers=headers, media_type="application/json")


async def _unless_disconnected(request: Request, work: asyncio.Future[EmbedResult]) -> EmbedResult | None:
    """The result, or None once the client hung up (its job is then cancelled before it runs)."""
    # The body has been read, so the next ASGI message can only be http.disconnect.
    gone = asyncio.ensure_future(request.receive())
    either: list[asyncio.Future[Any]] = [work, gone]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    return None


def create_app(state: ServingState, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="embedrt", docs_url=None, redoc_url=None)
    metrics = state.metrics

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        try:
            size = int(request.headers.get("content-length") or 0)
            body = b"" if size > config.max_message_bytes else await request.body()
            if max(size, len(body)) > config.max_message_bytes:
                raise InvalidInputError(f"the request body is {max(size, len(body))} bytes, more than this "
                                        f"server's limit of {config.max_message_bytes} (--max-message-bytes)")
            try:
                parsed = EmbeddingsBody.model_validate_json(body)
            except ValidationError as exc:
                raise _invalid_body(exc) from None
            work = asyncio.ensure_future(state.embed(parsed.to_request()))
            result = await _unless_disconnected(request, work)
            if result is None:
                metrics.request("http", "CANCELLED", time.perf_counter() - started)
                return Response(status_code=499)
            response = Response(to_body(result, state.model, parsed.encoding_format), media_type="application/json")
        except Exception as exc:
            response = error_response(exc)
            metrics.request("http", status_for(exc)[0], time.perf_counter() - started)
            return response
        metrics.request("http", "OK", time.perf_counter() - started)
        return response

    @app.get("/health")
    async def health() -> Response:
        return Response(json.dumps({"status": state.phase}), 200 if state.ready else 503,
                        media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/info")
    async def info() -> Response:
        try:
            return Response(json.dumps(state.info()), media_type="application/json")
        except Exception as exc:
            return error_response(exc)

    @app.get("/v1/models")
    async def models() -> Response:
        data = [{"id": state.model, "object": "model", "owned_by": "embedrt"}] if state.model else []
        return Response(json.dumps({"object": "list", "data": data}), media_type="application/json")

    return app


class HttpServer(uvicorn.Server):
    """uvicorn on a socket bound in advance (so port 0 works), leaving signals to the process owner."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.socket = sock

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # `embedrt serve` handles SIGTERM/SIGINT itself, to drain the core before either transport stops.
        yield

    async def serve_bound(self) -> None:
        await self.serve(sockets=[self.socket])


def create_http_server(state: ServingState, config: ServerConfig) -> tuple[HttpServer, int]:
    """A bound, not yet serving HTTP server and its port (``config.http_port`` may be 0)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.http_port or 0))
    sock.listen(2048)
    sock.setblocking(False)
    settings = uvicorn.Config(create_app(state, config), log_level="warning", access_log=False, lifespan="off",
                              timeout_graceful_shutdown=max(1, int(config.grace_s)), backlog=2048)
    return HttpServer(settings, sock), int(sock.getsockname()[1])


__all__ = ["EmbeddingsBody", "HttpServer", "create_app", "create_http_server", "error_response"]
