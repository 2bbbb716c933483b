"""Reading HTTP request bodies within limits: one ASGI middleware in front of every route.

Starlette's ``request.body()`` reads a chunked body whole before anything can look at its size,
and waits for it forever. Here the body is read as it arrives and reading stops at the first byte
past ``--max-message-bytes`` (after decompression too), or once ``--body-timeout`` seconds have
passed; the route then sees the body as if it had arrived in one piece. Refusals close the
connection, so the rest of an over-size body is never read.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..config import ServerConfig
from ..errors import (
    ClientGoneError,
    EmbedrtError,
    InvalidInputError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaError,
    status_for,
)
from .http_errors import error_parts
from .metrics import ServerMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_WITH_BODY = {"POST", "PUT", "PATCH"}
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _check_content_type(scope: Scope) -> None:
    content_type = _header(scope, b"content-type")
    if content_type is None:
        return  # no header: read as JSON, as OpenAI's API and curl --data-binary users expect
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaError(f"the body must be JSON (Content-Type: application/json), not {media or '(empty)'}")


class _Limited:
    """Counts raw and decoded bytes against the limit, decoding gzip/deflate as it goes."""

    def __init__(self, limit: int, encoding: str | None) -> None:
        self.limit = limit
        self.raw = 0
        self.chunks: list[bytes] = []
        self.size = 0
        name = (encoding or "identity").lower()
        if name not in ("identity", *_DECODERS):
            raise UnsupportedMediaError(f"Content-Encoding {encoding} is not supported; send the body uncompressed "
                                        "or with Content-Encoding gzip or deflate")
        self.decoder = zlib.decompressobj(_DECODERS[name]) if name in _DECODERS else None

    def _too_large(self, what: str) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body is larger {what}than this server's limit of {self.limit} "
                                    "bytes (--max-message-bytes / EMBEDRT_MAX_MESSAGE_BYTES); send fewer or "
                                    "shorter inputs per request")

    def add(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        if self.raw > self.limit:
            raise self._too_large("")
        if self.decoder is None:
            self._keep(chunk, "")
            return
        try:  # never inflate more than the limit allows: a small gzip bomb stays small
            out = self.decoder.decompress(chunk, self.limit + 1 - self.size)
        except zlib.error as exc:
            raise InvalidInputError(f"the body is not valid compressed data ({exc})") from None
        if self.decoder.unconsumed_tail:
            raise self._too_large("once decompressed ")
        self._keep(out, "once decompressed ")

    def _keep(self, data: bytes, what: str) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise self._too_large(what)
        if data:
            self.chunks.append(data)

    def finish(self) -> bytes:
        if self.decoder is not None and not self.decoder.eof:
            raise InvalidInputError("the compressed body ends before its compressed stream does")
        return b"".join(self.chunks)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole (decoded) body, or an error: too large, unsupported, client gone. No timeout here."""
    declared = _header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInputError(f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestTooLargeError(f"the request body is {int(declared)} bytes, more than this server's limit "
                                       f"of {limit} (--max-message-bytes / EMBEDRT_MAX_MESSAGE_BYTES); send fewer or "
                                       "shorter inputs per request")
    body = _Limited(limit, _header(scope, b"content-encoding"))
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError("the client hung up before sending its whole request")
        body.add(message.get("body", b""))
        if not message.get("more_body", False):
            return body.finish()


class BodyLimits:
    """ASGI middleware: read each request's body within the limits, then hand it to ``app``."""

    def __init__(self, app: App, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            _check_content_type(scope)
            timeout = self.config.body_timeout_s
            try:  # wait_for, not asyncio.timeout: the runtime supports Python 3.10
                body = await asyncio.wait_for(read_body(scope, receive, self.config.max_message_bytes),
                                              timeout if timeout > 0 else None)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(f"the request body did not arrive within {timeout:g} s "
                                          "(--body-timeout / EMBEDRT_BODY_TIMEOUT)") from None
        except EmbedrtError as exc:
            self.metrics.request("http", status_for(exc)[0], time.perf_counter() - started)
            if not isinstance(exc, ClientGoneError):
                await _refuse(send, exc)
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the connection's own messages (a later http.disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _refuse(send: Send, exc: BaseException) -> None:
    status, payload, extra = error_parts(exc)
    # Connection: close: the server stops reading this connection, so the unread rest of the body is dropped.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in extra.items())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


__all__ = ["BodyLimits", "read_body"]
