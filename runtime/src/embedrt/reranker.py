"""``Reranker``: (query, document) pairs in, relevance scores out; or a query and documents, ranked.

A second small head on ``Model``, beside ``Embedder``: the same loading, batching and lifecycle,
with a pair tokenizer before the backend (``pairs.py``) and the score head after it (``scoring.py``).
Like the Embedder, its work is split in verbs a server can run at different places: ``prepare``
(validate, prompt, tokenize) and ``infer`` (batch, run, restore order); ``score`` chains the two.
A ranking has the same split: ``prepare_ranking`` (a query's pairs and the windows of long
documents), ``infer``, then ``finish_ranking`` (each document's best window, best first); ``rerank``
chains the three, and the server's core runs them across requests (``embedrt.heads``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .backends import Backend
from .config import BatchingConfig
from .errors import InvalidFieldError
from .info import RerankerInfo
from .manifest import Manifest, RerankSpec
from .model import Model
from .pairs import Pair, PairTokenizer, validate_pairs
from .scoring import RerankResult, best_windows, check_top_n, rank
from .tokenizer import Encoded, text_problem

# How rerank() scores a document too long for one input: "truncate" as the model card does (keep
# what fits), or "max_window" as Cohere does (the best of windows that each fit; pairs.py).
LONG_DOCUMENTS = ("truncate", "max_window")


@dataclass(frozen=True)
class RankingInput:
    """A query's documents, tokenized for ``Reranker.infer``: one item per document, then the further
    windows of long documents (``owners[i]``: the document of item ``i``), and how many to return."""

    items: list[Encoded]
    owners: np.ndarray
    documents: int
    top_n: int


class Reranker(Model):
    """Scores pairs with one reranker artefact on one backend. Thread-safe; a context manager.

    ``Reranker.load(path, backend="auto", *, precision="auto", batching=None, backend_config=None)``
    opens an artefact (``Model.load``); an embedding model's is refused, naming ``Embedder.load``.
    """

    task: ClassVar[str] = "rerank"

    def __init__(self, path: Path, manifest: Manifest, backend: Backend, batching: BatchingConfig) -> None:
        super().__init__(path, manifest, backend, batching)
        assert manifest.rerank is not None  # Manifest refuses a rerank task without its spec
        self.spec: RerankSpec = manifest.rerank
        self._pairs = PairTokenizer(path, manifest)

    # -- the verbs -------------------------------------------------------------------------------

    def prepare(self, pairs: Sequence[Pair], *, instruction: str | None = None,
                truncate: bool = True) -> list[Encoded]:
        """Validate, prompt and tokenize (query, document) pairs as the model card does."""
        return self._pairs.encode(validate_pairs(pairs), instruction=instruction, truncate=truncate)

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and logits, float32 ``[n]`` each, in the order of ``items``."""
        if not items:
            return np.empty((0,), np.float32), np.empty((0,), np.float32)
        out = self._run(items)
        return out["score"], out["logit"]

    def score(self, pairs: Sequence[Pair], *, instruction: str | None = None, truncate: bool = True) -> np.ndarray:
        """float32 ``[n]``: one relevance score per (query, document) pair, in input order.

        ``instruction``: the task for instruction-tuned rerankers (Qwen3-Reranker; None: the model's
        default); refused by a reranker without one. ``truncate=False``: an over-long pair raises
        ``InputTooLongError`` naming it, instead of being cut to fit.
        """
        return self.infer(self.prepare(pairs, instruction=instruction, truncate=truncate))[0]

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
               top_n: int | None = None, long_documents: str = "truncate") -> list[RerankResult]:
        """``documents`` ranked by relevance to ``query``, best first (equal scores in input order),
        the ``top_n`` best (all when None; more than there are gives all).

        ``long_documents``: "truncate" (default, the model card's rule: keep what fits) or
        "max_window": a document too long for one input scores as its best window (``pairs.py``).
        """
        ranking = self.prepare_ranking(query, documents, instruction=instruction, top_n=top_n,
                                       long_documents=long_documents)
        scores, logits = self.infer(ranking.items)
        return self.finish_ranking(scores, logits, ranking)

    def prepare_ranking(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
                        top_n: int | None = None, long_documents: str = "truncate",
                        truncate: bool = True, max_pairs: int | None = None) -> RankingInput:
        """``rerank``'s first step: validate, then tokenize one pair per document (and, for
        "max_window", the further windows of each long document). ``truncate=False`` refuses a pair over
        the maximum length (``InputTooLongError``, its index the document's) instead of cutting it;
        "max_window" never cuts a document, so it ignores ``truncate``. ``max_pairs``: the most pairs
        (windows included) one ranking may make; beyond it, ``InvalidFieldError`` on ``documents``."""
        docs = _check_rerank(query, documents, long_documents)
        count = check_top_n(top_n, len(docs))
        windowed = long_documents == "max_window"
        # Every text was checked just above: tokenize without validate_pairs checking the query once per document.
        items = self._pairs.encode([(query, d) for d in docs], instruction=instruction, truncate=truncate or windowed)
        owners = list(range(len(docs)))
        if windowed:
            for i in [i for i, item in enumerate(items) if item.truncated]:
                windows = self._pairs.windows(query, docs[i], instruction)
                items[i] = windows[0]
                items.extend(windows[1:])
                owners.extend([i] * (len(windows) - 1))
                if max_pairs is not None and len(items) > max_pairs:
                    raise InvalidFieldError("documents", (
                        f'with long_documents "max_window", document {i} alone makes {len(windows)} windows and '
                        f"the request at least {len(items)} pairs, more than the limit of {max_pairs} per "
                        'request; split the request, send shorter documents, or use long_documents "truncate"'))
        return RankingInput(items, np.asarray(owners), len(docs), count)

    def finish_ranking(self, scores: np.ndarray, logits: np.ndarray, ranking: RankingInput) -> list[RerankResult]:
        """``rerank``'s last step: ``infer``'s outputs for ``ranking.items`` -> each document's best
        window, the ``top_n`` best documents first."""
        best = best_windows(logits, ranking.owners, ranking.documents)
        return rank(scores[best], logits[best], ranking.top_n)

    def info(self) -> RerankerInfo:
        """The reranker and how it runs (a closed Reranker reports its backend as it last ran)."""
        m, spec = self.manifest, self.spec
        return RerankerInfo(name=m.name, architecture=m.architecture, max_length=m.max_length,
                            pair_encoding=spec.prompt.encoding, activation=spec.activation,
                            default_instruction=spec.prompt.default_instruction, padding_side=m.padding_side,
                            backend=self._describe_backend(), max_batch_tokens=self.batching.max_batch_tokens,
                            max_batch_size=self.batching.max_batch_size)


def _check_rerank(query: str, documents: Sequence[str], long_documents: str) -> list[str]:
    """The documents as a list, once the query, the documents and the option are known to be usable."""
    problem = text_problem(query)
    if problem:
        raise InvalidFieldError("query", problem)
    if not query.strip():
        raise InvalidFieldError("query", "is empty; pass the text to rank the documents by")
    if isinstance(documents, (str, bytes)):
        raise InvalidFieldError("documents", "pass a list of documents, not a single string (wrap it: [document])")
    if not isinstance(documents, Iterable):
        raise InvalidFieldError("documents", f"pass a list of documents, not {type(documents).__name__}")
    docs = list(documents)
    if not docs:
        raise InvalidFieldError("documents", "is empty; pass at least one document to rank")
    for i, doc in enumerate(docs):
        problem = text_problem(doc)
        if problem:
            raise InvalidFieldError("documents", f"document {i} {problem}")
    if long_documents not in LONG_DOCUMENTS:
        raise InvalidFieldError("long_documents", f"must be one of {', '.join(LONG_DOCUMENTS)}, "
                                f"got {long_documents!r}")
    return docs


__all__ = ["LONG_DOCUMENTS", "RankingInput", "RerankResult", "Reranker"]
