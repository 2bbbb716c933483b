"""The HTTP rerank APIs: JSON bodies <-> ``RerankRequest`` / ``Ranking``, in the two shapes clients speak.

- ``POST /v1/rerank``: Cohere's and Jina's shape, which LangChain, LlamaIndex and LiteLLM send:
  ``{model, query, documents, top_n, return_documents}`` -> ``{id, model, results: [{index,
  relevance_score, document?: {text}}], usage: {total_tokens}}``.
- ``POST /v2/rerank``: Cohere's v2 (``cohere.ClientV2.rerank``): the same body (``model`` is required by
  Cohere, any name here when one reranker is served); the answer adds Cohere's ``meta``.
- ``POST /rerank``: text-embeddings-inference's: ``{query, texts, raw_scores, return_text, truncate}``
  -> ``[{index, score, text?}]``.

Both answer best first. Routes live in ``http_app``; errors keep the server's one error shape.
"""

from __future__ import annotations

import json
import uuid
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..core import Ranking, RerankRequest
from ..errors import InvalidFieldError

_TEXTS = "a list of strings"


class RerankBody(BaseModel):
    """POST /v1/rerank (Cohere / Jina), plus embedrt's extras. JSON types are strict."""

    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. Cohere's max_tokens_per_doc: unused
    EXPECTED: ClassVar[dict[str, str]] = {
        "model": "a string", "query": "a string", "documents": _TEXTS, "top_n": "an integer",
        "return_documents": "true or false", "instruction": "a string",
        "long_documents": '"truncate" or "max_window"',
    }
    FIELDS: ClassVar[dict[str, str]] = {}  # the core's field names are this API's

    model: str | None = None  # which served reranker; any name when the server has one
    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = False
    instruction: str | None = None  # embedrt: the task, for instruction-tuned rerankers
    long_documents: str = "truncate"  # embedrt: or "max_window", a long document scored by its best window

    def to_request(self) -> RerankRequest:
        return RerankRequest(query=self.query, documents=tuple(self.documents), top_n=self.top_n,
                             instruction=self.instruction, long_documents=self.long_documents)

    def render(self, ranking: Ranking, model: str) -> bytes:
        results = []
        for r in ranking.results:
            result: dict[str, object] = {"index": r.index, "relevance_score": r.score}
            if self.return_documents:
                result["document"] = {"text": self.documents[r.index]}
            results.append(result)
        return json.dumps({"id": str(uuid.uuid4()), "model": model, "results": results,
                           "usage": {"total_tokens": ranking.tokens}, **self.extra(ranking)}).encode()

    def extra(self, ranking: Ranking) -> dict[str, object]:
        return {}


class CohereV2RerankBody(RerankBody):
    """POST /v2/rerank: Cohere's v2 API. Same fields; the answer carries ``meta`` as Cohere's does
    (one search unit per request, its billing unit; tokens in ``billed_units`` and ``usage``)."""

    def extra(self, ranking: Ranking) -> dict[str, object]:
        return {"meta": {"api_version": {"version": "2"},
                         "billed_units": {"search_units": 1, "input_tokens": ranking.tokens}}}


class TeiRerankBody(BaseModel):
    """POST /rerank as text-embeddings-inference takes it, plus embedrt's ``model`` and ``instruction``.

    ``truncate`` defaults to true here (TEI's default is false unless it runs with --auto-truncate),
    as for embeddings; truncation is always on the right.
    """

    model_config = ConfigDict(extra="ignore", strict=True)
    EXPECTED: ClassVar[dict[str, str]] = {
        "model": "a string", "query": "a string", "texts": _TEXTS, "raw_scores": "true or false",
        "return_text": "true or false", "truncate": "true or false", "truncation_direction": '"right"',
        "instruction": "a string",
    }
    FIELDS: ClassVar[dict[str, str]] = {"documents": "texts"}  # the core's `documents[3]` is this API's `texts[3]`

    model: str | None = None
    query: str
    texts: list[str]
    raw_scores: bool = False  # the logit (before the activation) instead of the score
    return_text: bool = False
    truncate: bool = True
    truncation_direction: str = "right"
    instruction: str | None = None

    def to_request(self) -> RerankRequest:
        if self.truncation_direction.lower() != "right":
            raise InvalidFieldError("truncation_direction", f"only right truncation is supported, got "
                                    f"{self.truncation_direction!r}")
        return RerankRequest(query=self.query, documents=tuple(self.texts), instruction=self.instruction,
                             truncate=self.truncate)

    def render(self, ranking: Ranking, model: str) -> bytes:
        results = []
        for r in ranking.results:
            result: dict[str, object] = {"index": r.index, "score": r.logit if self.raw_scores else r.score}
            if self.return_text:
                result["text"] = self.texts[r.index]
            results.append(result)
        return json.dumps(results).encode()


__all__ = ["RerankBody", "TeiRerankBody"]
