"""One exception family for the runtime. Messages say what to do next.

Transports map these to status codes in one place (see ``status_for``), so a new error type needs
one line there, not a change in every handler.
"""

from __future__ import annotations


class EmbedrtError(Exception):
    """Base class of every error embedrt raises on purpose."""


class InvalidInputError(EmbedrtError, ValueError):
    """The request itself is wrong: bad type, empty list where one is needed, bad option."""


class InputTooLongError(InvalidInputError):
    """A text exceeds the model's maximum length and truncation was turned off."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, more than the model's limit of {limit}; "
            "shorten it or pass truncate=True"
        )
        self.index, self.tokens, self.limit = index, tokens, limit


class OverloadedError(EmbedrtError):
    """Admission control refused work: the queue is full. Retry later or add capacity."""


class BackendError(EmbedrtError):
    """The inference backend failed while running a batch."""


class ArtefactError(EmbedrtError):
    """An artefact directory is missing, incomplete, corrupt or of an unknown schema."""


class EngineMismatchError(ArtefactError):
    """No engine in the artefact matches this GPU / TensorRT version / flavour."""


class UnavailableError(EmbedrtError):
    """The service is not ready yet or is shutting down."""


def status_for(error: BaseException) -> tuple[str, int]:
    """Map an error to (gRPC status name, HTTP status): the only place where that happens."""
    if isinstance(error, InvalidInputError):
        return "INVALID_ARGUMENT", 400
    if isinstance(error, OverloadedError):
        return "RESOURCE_EXHAUSTED", 429
    if isinstance(error, UnavailableError):
        return "UNAVAILABLE", 503
    return "INTERNAL", 500
