"""Errors as OpenAI's clients expect them: ``{"error": {"message", "type", "param", "code"}}``.

The status comes from ``embedrt.errors.status_for`` (the one mapping); this module only shapes the
body and renames the core's gRPC field names to the HTTP API's (``inputs[3]`` -> ``input[3]``).
"""

from __future__ import annotations

import json

from ..errors import InvalidFieldError, status_for

# OpenAI's error "type" for each HTTP status that status_for can produce (presentation only).
_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
                408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
                429: "rate_limit_error", 503: "service_unavailable", 504: "timeout_error",
                500: "server_error"}
_FIELD_NAMES = {"inputs": "input"}  # the core names gRPC fields; OpenAI calls the list `input`


def http_field(field: str, names: dict[str, str] | None = None) -> str:
    """The core's field name in the HTTP API's terms (``names``: a route's own renames, e.g. TEI's ``texts``)."""
    base, _, rest = field.partition("[")
    renames = {**_FIELD_NAMES, **(names or {})}
    return renames.get(base, base) + (f"[{rest}" if rest else "")


def error_parts(exc: BaseException, names: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """(HTTP status, JSON body, extra headers) for ``exc``; ``names`` as for ``http_field``."""
    code, status = status_for(exc)
    message, param = str(exc), getattr(exc, "param", None)
    if isinstance(exc, InvalidFieldError):
        param = http_field(exc.field, names)
        message = f"invalid `{param}`: {exc.detail}"
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
    headers = {"Retry-After": "1"} if status in (429, 503) else {}
    return status, json.dumps(body).encode(), headers


__all__ = ["error_parts", "http_field"]
