"""What the core does with each kind of request: a small head per task over a loaded model.

The core (``core.TaskScheduler``) admits requests, tokenizes them on its threads, merges the
requests of many clients into one backend call and answers each one; what those steps mean for one
kind of request is its ``Head``:

- ``check(request, max_inputs)``: the checks that cost O(1) per input, on the caller's thread,
  before the request is admitted;
- ``prepare(request)``: validate each text and tokenize, on a tokenizer thread -> ``Prepared``;
- ``infer(items)``: one backend call for the items of many requests, on the backend thread: arrays
  with one row per item, in their order;
- ``finish(request, prepared, rows, queued)``: the request's own rows of those arrays -> its result.

A client's mistake is an ``InvalidFieldError`` naming the field in the core's terms (gRPC's field
names: ``inputs[3]``, ``documents[2]``); each transport renames fields its API spells otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from .errors import InputTooLongError, InvalidFieldError, InvalidInputError, InvalidTextError
from .manifest import RerankSpec
from .pooling import check_dimensions
from .prompts import Prompts
from .requests import EmbedRequest, EmbedResult, Ranking, RerankRequest
from .reranker import LONG_DOCUMENTS, RankingInput
from .scoring import RerankResult, check_top_n
from .tokenizer import Encoded, TokenIdFormat, text_problem

Req = TypeVar("Req", contravariant=True)
Res = TypeVar("Res", covariant=True)


@dataclass
class Prepared:
    """A request tokenized: its backend items, and what its head's ``finish`` needs beside their rows."""

    items: list[Encoded]
    context: Any = None  # e.g. a ranking's windows and the document each belongs to
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(item.length for item in self.items)


class Head(Protocol[Req, Res]):
    """One kind of request as the core runs it (see the module's docstring)."""

    def check(self, request: Req, max_inputs: int) -> None: ...
    def prepare(self, request: Req) -> Prepared: ...
    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, ...]: ...
    def finish(self, request: Req, prepared: Prepared, rows: tuple[np.ndarray, ...], queued: float) -> Res: ...


# -- embeddings ----------------------------------------------------------------------------------


class EmbedModel(Protocol):
    """The part of ``Embedder`` the core uses (a fake can stand in for it in unit tests)."""

    def prepare(self, texts: Sequence[str], *, instruction: str | None = None,
                truncate: bool = True) -> list[Encoded]: ...
    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]: ...
    def finish(self, vectors: np.ndarray, norms: np.ndarray, *, dimensions: int | None = None,
               normalize: bool = True) -> np.ndarray: ...


class EmbedHead:
    """``EmbedRequest`` -> ``EmbedResult``: texts (or token ids) in, one vector per input out."""

    def __init__(self, embedder: EmbedModel, dimensions_range: tuple[int, int], prompts: Prompts | None = None,
                 token_ids: TokenIdFormat | None = None) -> None:
        self.embedder = embedder
        self._range = dimensions_range
        self._prompts = prompts or Prompts()
        self._token_ids = token_ids  # None: the model takes text only

    def check(self, request: EmbedRequest, max_inputs: int) -> None:
        if request.texts and request.token_ids:
            raise InvalidFieldError("inputs", "send texts or token ids, not both")
        if not request.count:
            raise InvalidFieldError("inputs", "it is empty; send at least one text")
        if request.count > max_inputs:
            raise InvalidFieldError("inputs", f"{request.count} inputs, more than the limit of {max_inputs} per "
                                    "request; split the request")
        if request.token_ids:
            if self._token_ids is None:
                raise InvalidFieldError("inputs", "this model's tokenizer adds special tokens in a way token-id "
                                        "input cannot reproduce; send text")
            if request.instruction is not None or request.query:
                name = "instruction" if request.instruction is not None else "query"
                raise InvalidFieldError(name, "applies to text only: send the query as text to have it formatted")
        elif request.instruction is not None or request.query:  # else not a query: no template applies
            self._prompts.check_instruction(request.instruction)
        self._dimensions(request)

    def _dimensions(self, request: EmbedRequest) -> int:
        try:
            return check_dimensions(request.dimensions, self._range)
        except InvalidInputError as exc:
            raise InvalidFieldError("dimensions", str(exc)) from None

    def _format(self, request: EmbedRequest) -> tuple[str, ...]:
        if request.instruction is None and not request.query:
            return request.texts
        return tuple(self._prompts.format_query(text, request.instruction) for text in request.texts)

    def prepare(self, request: EmbedRequest) -> Prepared:
        try:
            if request.token_ids:
                assert self._token_ids is not None  # checked on admission
                return Prepared(self._token_ids.encode(request.token_ids, truncate=request.truncate))
            return Prepared(self.embedder.prepare(self._format(request), truncate=request.truncate))
        except InvalidFieldError:
            raise
        except InputTooLongError as exc:
            count = f"at least {exc.tokens}" if exc.at_least else str(exc.tokens)
            raise InvalidFieldError(f"inputs[{exc.index}]", (
                f"{count} tokens, more than the model's limit of {exc.limit}; shorten it or set `truncate` "
                "to true")) from None
        except InvalidTextError as exc:
            raise InvalidFieldError(f"inputs[{exc.index}]", exc.detail) from None
        except InvalidInputError as exc:
            raise InvalidFieldError("inputs", str(exc)) from None

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, ...]:
        return self.embedder.infer(items)  # looked up per call: tests wrap a loaded model's infer

    def finish(self, request: EmbedRequest, prepared: Prepared, rows: tuple[np.ndarray, ...],
               queued: float) -> EmbedResult:
        vectors, norms = rows
        out = self.embedder.finish(vectors, norms, dimensions=self._dimensions(request), normalize=request.normalize)
        return EmbedResult(out, prepared.tokens, queued)


# -- reranking -----------------------------------------------------------------------------------


class RerankModel(Protocol):
    """The part of ``Reranker`` the core uses."""

    spec: RerankSpec

    def prepare_ranking(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
                        top_n: int | None = None, long_documents: str = "truncate",
                        truncate: bool = True, max_pairs: int | None = None) -> RankingInput: ...
    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]: ...
    def finish_ranking(self, scores: np.ndarray, logits: np.ndarray,
                       ranking: RankingInput) -> list[RerankResult]: ...


class RerankHead:
    """``RerankRequest`` -> ``Ranking``: a query and its documents in, the best documents first out.

    The documents of one request are one pair each (or, for long documents with "max_window", a
    few windows each); pairs of many requests share a backend call as texts do.
    """

    def __init__(self, reranker: RerankModel, max_pairs: int | None = None) -> None:
        self.reranker = reranker
        self.max_pairs = max_pairs  # pairs per request, windows included

    def check(self, request: RerankRequest, max_inputs: int) -> None:
        if not isinstance(request.query, str) or not request.query.strip():
            raise InvalidFieldError("query", "is empty; send the text to rank the documents by")
        count = len(request.documents)
        if not count:
            raise InvalidFieldError("documents", "it is empty; send at least one document to rank")
        if count > max_inputs:
            raise InvalidFieldError("documents", f"{count} documents, more than the limit of {max_inputs} per "
                                    "request; split the request")
        check_top_n(request.top_n, count)  # below 1 is refused; more than there are gives all
        if request.long_documents not in LONG_DOCUMENTS:
            raise InvalidFieldError("long_documents", f"must be one of {', '.join(LONG_DOCUMENTS)}, "
                                    f"got {request.long_documents!r}")
        self.reranker.spec.prompt.check_instruction(request.instruction)

    def prepare(self, request: RerankRequest) -> Prepared:
        problem = text_problem(request.query)
        if problem:
            raise InvalidFieldError("query", problem)
        for i, document in enumerate(request.documents):
            problem = text_problem(document)
            if problem:
                raise InvalidFieldError(f"documents[{i}]", problem)
        try:
            ranking = self.reranker.prepare_ranking(
                request.query, request.documents, instruction=request.instruction, top_n=request.top_n,
                long_documents=request.long_documents, truncate=request.truncate, max_pairs=self.max_pairs)
        except InputTooLongError as exc:
            count = f"at least {exc.tokens}" if exc.at_least else str(exc.tokens)
            raise InvalidFieldError(f"documents[{exc.index}]", (
                f"with the query and prompt it takes {count} tokens, more than the model's limit of {exc.limit}; "
                "shorten it or set `truncate` to true")) from None
        return Prepared(ranking.items, ranking)

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, ...]:
        return self.reranker.infer(items)

    def finish(self, request: RerankRequest, prepared: Prepared, rows: tuple[np.ndarray, ...],
               queued: float) -> Ranking:
        scores, logits = rows
        results = self.reranker.finish_ranking(scores, logits, prepared.context)
        return Ranking(tuple(results), prepared.tokens, queued)


__all__ = ["EmbedHead", "EmbedModel", "Head", "Prepared", "RerankHead", "RerankModel"]
