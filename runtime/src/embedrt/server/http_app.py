"""HTTP transport (FastAPI on uvicorn): OpenAI's /v1/embeddings, Cohere's /v1/rerank, TEI's /rerank,
/health, /metrics, /info, /v1/models.

Like the gRPC side it only converts JSON <-> plain types (rerank bodies: ``http_rerank``), picks the
model (``ServingState.route``) and maps errors with ``status_for``. Bodies are read within the size
and time limits by ``http_body.BodyLimits`` before any route runs.
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
from typing import Any, ClassVar, Literal, TypeVar

import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from ..config import ServerConfig
from ..core import EmbedRequest, EmbedResult
from ..errors import ConfigError, InvalidInputError, MethodNotAllowedError, RouteNotFoundError, status_for
from .http_body import BodyLimits
from .http_errors import error_parts
from .http_rerank import CohereV2RerankBody, RerankBody, TeiRerankBody
from .state import ServingState, Task, info_fields

_PARSE_OFF_LOOP = 1 << 16  # bodies larger than this are parsed on a thread, not on the event loop
_ROUTES = "POST /v1/embeddings, /v1/rerank, /v2/rerank, /rerank, GET /health, /metrics, /info, /v1/models"
T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)


class EmbeddingsBody(BaseModel):
    """POST /v1/embeddings, as OpenAI defines it, plus embedrt's optional extras. JSON types are strict."""

    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. `user`: accepted, unused
    EXPECTED: ClassVar[dict[str, str]] = {  # what each field takes, in JSON terms, for error messages
        "input": "a string, a list of strings, or token ids (a list of integers, or a list of lists of integers)",
        "model": "a string", "dimensions": "an integer", "encoding_format": '"float" or "base64"',
        "instruction": "a string", "query": "true or false", "normalize": "true or false",
        "truncate": "true or false",
    }
    FIELDS: ClassVar[dict[str, str]] = {"inputs": "input"}  # the core's field names, as this API spells them

    input: str | list[str] | list[int] | list[list[int]]  # token ids: the served model's own vocabulary
    model: str | None = None  # which served embedder; any name when the server has one
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    instruction: str | None = None  # embedrt: query task for instruction-tuned models
    query: bool = False
    normalize: bool = True
    truncate: bool = True

    def to_request(self) -> EmbedRequest:
        value = self.input
        texts: tuple[str, ...] = ()
        ids: tuple[tuple[int, ...], ...] = ()
        if isinstance(value, str):
            texts = (value,)
        elif value and isinstance(value[0], int):
            ids = (tuple(value),)  # type: ignore[arg-type]
        elif value and isinstance(value[0], list):
            ids = tuple(tuple(row) for row in value)  # type: ignore[union-attr]
        else:
            texts = tuple(value)  # type: ignore[arg-type]
        return EmbedRequest(texts=texts, instruction=self.instruction, query=self.query, token_ids=ids,
                            dimensions=self.dimensions, normalize=self.normalize, truncate=self.truncate)

    def render(self, result: EmbedResult, model: str) -> bytes:
        return to_body(result, model, self.encoding_format)


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


def _json_kind(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
             dict: "an object", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _invalid_body(exc: ValidationError, expected: dict[str, str]) -> InvalidInputError:
    """One message for the first wrong field, naming it as the API does (``param`` too)."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    if first["type"] == "json_invalid":
        return InvalidInputError(f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    if not loc:
        return InvalidInputError(f"the body must be a JSON object, not {_json_kind(first.get('input'))}")
    field = str(loc[0])
    if first["type"] == "missing":
        error = InvalidInputError(f"`{field}` is required")
    elif len(loc) == 2 and isinstance(loc[1], int):  # one item of a list of one type: `documents[2]`
        field = f"{field}[{loc[1]}]"
        given = first.get("input")
        error = InvalidInputError(f"invalid `{field}`: expected a string, got {_json_kind(given)}")
    else:
        whole = len(loc) == 1 or (len(loc) == 2 and isinstance(loc[1], str))  # the field, or one union branch
        given = first.get("input") if whole else None
        got = "got a list with other values" if not whole or isinstance(given, list) else f"got {_json_kind(given)}"
        if isinstance(given, (str, int, float)) and len(repr(given)) < 40:
            got += f" ({json.dumps(given)})"
        error = InvalidInputError(f"invalid `{field}`: expected {expected.get(field, 'another value')}, {got}")
    error.param = field  # type: ignore[attr-defined]
    return error


def error_response(exc: BaseException, names: dict[str, str] | None = None) -> Response:
    status, body, headers = error_parts(exc, names)
    return Response(body, status, headers=headers or None, media_type="application/json")


async def _parse(body: bytes, kind: type[B]) -> B:
    try:
        if len(body) > _PARSE_OFF_LOOP:  # a 32 MiB body takes tens of ms to parse: not on the loop
            return await asyncio.to_thread(kind.model_validate_json, body)
        return kind.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid_body(exc, getattr(kind, "EXPECTED", {})) from None


async def _unless_disconnected(request: Request, work: asyncio.Future[T]) -> T | None:
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


def create_app(state: ServingState[Any], config: ServerConfig) -> FastAPI:
    app = FastAPI(title="embedrt", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = state.metrics
    app.add_middleware(BodyLimits, config=config, metrics=metrics)  # type: ignore[arg-type]

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> Response:
        error: Exception = InvalidInputError(str(exc.detail))
        if exc.status_code == 404:
            error = RouteNotFoundError(f"no route {request.method} {request.url.path}; this server has {_ROUTES}")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"{request.url.path} does not take {request.method}; this server has "
                                          f"{_ROUTES}")
        response = error_response(error)
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    async def answer(request: Request, kind: type[EmbeddingsBody | RerankBody | TeiRerankBody],
                     task: Task) -> Response:
        """Parse, pick the model, run it through its core, render: one path for every inference route."""
        started = time.perf_counter()
        try:
            parsed: Any = await _parse(await request.body(), kind)  # already read, within limits, by BodyLimits
            plain = parsed.to_request()
            served = state.route(task, parsed.model, "http")
            work = asyncio.ensure_future(state.run(served, plain))
            result = await _unless_disconnected(request, work)
            if result is None:
                metrics.request("http", "CANCELLED", time.perf_counter() - started)
                return Response(status_code=499)
            response = Response(parsed.render(result, served.name), media_type="application/json")
        except Exception as exc:
            response = error_response(exc, kind.FIELDS)
            metrics.request("http", status_for(exc)[0], time.perf_counter() - started)
            return response
        metrics.request("http", "OK", time.perf_counter() - started)
        return response

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await answer(request, EmbeddingsBody, "embed")

    @app.post("/v1/rerank")
    async def rerank(request: Request) -> Response:
        return await answer(request, RerankBody, "rerank")

    @app.post("/v2/rerank")
    async def rerank_v2(request: Request) -> Response:
        return await answer(request, CohereV2RerankBody, "rerank")

    @app.post("/rerank")
    async def tei_rerank(request: Request) -> Response:
        return await answer(request, TeiRerankBody, "rerank")

    @app.get("/health")
    async def health() -> Response:
        return Response(json.dumps({"status": state.phase}), 200 if state.ready else 503,
                        media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/info")
    async def info(model: str | None = None) -> Response:
        try:
            return Response(json.dumps(info_fields(state.info(model, "http"))), media_type="application/json")
        except Exception as exc:
            return error_response(exc)

    @app.get("/v1/models")
    async def models() -> Response:
        data = [{"id": m.name, "object": "model", "owned_by": "embedrt", "task": m.task}
                for m in state.models.values()]
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


def create_http_server(state: ServingState[Any], config: ServerConfig) -> tuple[HttpServer, int]:
    """A bound, not yet serving HTTP server and its port (``config.http_port`` may be 0)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.http_port or 0))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        field = "server.host" if isinstance(exc, socket.gaierror) else "server.http_port"
        raise ConfigError(field, f"cannot listen on {config.host}:{config.http_port}: "
                          f"{exc.strerror or exc}; pick another port (0 turns HTTP off)") from None
    sock.setblocking(False)
    settings = uvicorn.Config(create_app(state, config), log_level="warning", access_log=False, lifespan="off",
                              timeout_graceful_shutdown=max(1, int(config.grace_s)), backlog=2048)
    return HttpServer(settings, sock), int(sock.getsockname()[1])


__all__ = ["EmbeddingsBody", "HttpServer", "create_app", "create_http_server", "error_response"]
