"""One exception family for the runtime. Messages say what to do next.

Transports map these to status codes in one place (see ``status_for``), so a new error type needs
one line there, not a change in every handler.
"""

from __future__ import annotations


def _restore(kind: type[EmbedrtError], args: tuple[object, ...], state: dict[str, object]) -> EmbedrtError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class EmbedrtError(Exception):
    """Base class of every error embedrt raises on purpose.

    Picklable whatever a subclass's constructor takes (``InvalidFieldError(field, message)``), so an
    error crosses a process boundary intact, e.g. from a Ray Serve replica to the HTTP gateway.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return _restore, (type(self), self.args, self.__dict__)


class InvalidInputError(EmbedrtError, ValueError):
    """The request itself is wrong: bad type, empty list where one is needed, bad option."""


class InvalidFieldError(InvalidInputError):
    """Invalid input attributed to one request field (``instruction``, ``dimensions``, ``inputs``), so each
    transport can name the field in its own terms."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid `{field}`: {message}")
        self.field, self.detail = field, message


class ModelNotFoundError(InvalidFieldError):
    """A request names a model this server does not serve, where several could be meant."""


class InputTooLongError(InvalidInputError):
    """A text (or a reranker's pair, ``what="pair"``) exceeds the model's maximum length and truncation
    was turned off.

    ``at_least``: only a prefix of the text was tokenized (counting all of a huge text would cost
    more than the answer is worth), so ``tokens`` is a lower bound.
    """

    def __init__(self, index: int, tokens: int, limit: int, *, at_least: bool = False, what: str = "input") -> None:
        count = f"at least {tokens}" if at_least else f"{tokens}"
        super().__init__(
            f"{what} {index} has {count} tokens, more than the model's limit of {limit}; "
            "shorten it or pass truncate=True"
        )
        self.index, self.tokens, self.limit, self.at_least = index, tokens, limit, at_least


class InvalidTextError(InvalidInputError):
    """One input is not text (not a str, or not encodable as UTF-8); ``detail`` says why."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"input {index} {detail}")
        self.index, self.detail = index, detail


class ConfigError(InvalidInputError):
    """A configuration value is out of range or unusable; ``field`` is ``"section.name"`` (``server.http_port``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.detail = field, message


class RequestTooLargeError(InvalidInputError):
    """A request body is larger than the server's message-size limit."""


class UnsupportedMediaError(InvalidInputError):
    """A request body in a content type or encoding the server does not read."""


class RouteNotFoundError(InvalidInputError):
    """No such path (HTTP)."""


class MethodNotAllowedError(InvalidInputError):
    """The path exists but not with this method (HTTP)."""


class RequestTimeoutError(EmbedrtError):
    """The client did not send its whole request in time."""


class ClientGoneError(EmbedrtError):
    """The client hung up before its request was answered: nobody is left to answer."""


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


class DeadlineExceededError(EmbedrtError):
    """The request's deadline passed before it could be run: the server is too busy to answer in time."""


def status_for(error: BaseException) -> tuple[str, int]:
    """Map an error to (gRPC status name, HTTP status): the only place where that happens."""
    if isinstance(error, RequestTooLargeError):  # what gRPC itself answers for an over-size message
        return "RESOURCE_EXHAUSTED", 413
    if isinstance(error, UnsupportedMediaError):
        return "INVALID_ARGUMENT", 415
    if isinstance(error, (RouteNotFoundError, ModelNotFoundError)):
        return "NOT_FOUND", 404
    if isinstance(error, MethodNotAllowedError):
        return "UNIMPLEMENTED", 405
    if isinstance(error, InvalidInputError):
        return "INVALID_ARGUMENT", 400
    if isinstance(error, OverloadedError):
        return "RESOURCE_EXHAUSTED", 429
    if isinstance(error, UnavailableError):
        return "UNAVAILABLE", 503
    if isinstance(error, DeadlineExceededError):
        return "DEADLINE_EXCEEDED", 504
    if isinstance(error, RequestTimeoutError):
        return "DEADLINE_EXCEEDED", 408
    if isinstance(error, ClientGoneError):  # 499: nginx's "client closed request"; never actually sent
        return "CANCELLED", 499
    return "INTERNAL", 500
