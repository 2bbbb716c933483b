"""What a transport hands the core and gets back: requests and results as plain values.

Transports (gRPC, HTTP, a batch job) convert their own messages to these at the edge, so the core
(``embedrt.core.Scheduler``) knows nothing of protobuf or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .scoring import RerankResult


@dataclass(frozen=True)
class EmbedRequest:
    """One request as plain values; transports convert their messages to this at the edge."""

    texts: tuple[str, ...]
    instruction: str | None = None  # format the texts as queries with this instruction
    query: bool = False  # format as queries with the model's default instruction when none is given
    dimensions: int | None = None
    normalize: bool = True
    truncate: bool = True
    deadline: float | None = None  # time.monotonic() after which the result is of no use
    token_ids: tuple[tuple[int, ...], ...] = ()  # instead of texts: ids of the model's vocabulary

    @property
    def count(self) -> int:
        return len(self.token_ids) if self.token_ids else len(self.texts)


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # float32 [len(texts), dimensions], in request order
    tokens: int  # tokens the texts took, after prompts and truncation
    queue_seconds: float  # admission to the start of the backend call


@dataclass(frozen=True)
class RerankRequest:
    """A query and the documents to rank by relevance to it, as plain values."""

    query: str
    documents: tuple[str, ...]
    top_n: int | None = None  # how many results: all when None, every document when more than there are
    instruction: str | None = None  # the task, for instruction-tuned rerankers (None: the model's default)
    truncate: bool = True  # False: a pair over the model's maximum length is refused, not cut
    long_documents: str = "truncate"  # or "max_window": a long document scores as its best window
    deadline: float | None = None  # time.monotonic() after which the result is of no use


@dataclass(frozen=True)
class Ranking:
    results: tuple[RerankResult, ...]  # the top_n best documents, best first (equal scores in input order)
    tokens: int  # tokens the pairs took, prompt and windows included, after truncation
    queue_seconds: float  # admission to the start of the backend call


class SchedulerMetrics(Protocol):
    """What the core reports; the server implements it with Prometheus."""

    def queue_depth(self, requests: int, tokens: int) -> None: ...
    def queued(self, seconds: float) -> None: ...
    def batch(self, requests: int, texts: int, tokens: int, seconds: float) -> None: ...


class NoMetrics:
    """Reports nowhere: a scheduler without a metrics sink."""

    def queue_depth(self, requests: int, tokens: int) -> None:
        pass

    def queued(self, seconds: float) -> None:
        pass

    def batch(self, requests: int, texts: int, tokens: int, seconds: float) -> None:
        pass


__all__ = ["EmbedRequest", "EmbedResult", "NoMetrics", "Ranking", "RerankRequest", "SchedulerMetrics"]
