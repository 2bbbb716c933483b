"""``Embedder``: the facade users import. Texts in, float32 vectors out, in input order.

The work is split in three verbs so that a server can run them at different places (tokenize on
request threads, batch across requests, finish per request): ``prepare`` (validate, prompt,
tokenize), ``infer`` (sort, micro-batch, pad, run the backend, restore order) and ``finish``
(Matryoshka truncation, renormalisation). ``embed`` chains the three.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .backends import Backend
from .config import BatchingConfig
from .info import ModelInfo
from .manifest import Manifest
from .model import Model
from .pooling import check_dimensions, finish, l2_normalize
from .streaming import WINDOW, embed_blocks
from .tokenizer import Encoded, TextTokenizer, TokenIdFormat, validate_texts


class Embedder(Model):
    """Embeds texts with one artefact on one backend. Thread-safe; a context manager.

    ``Embedder.load(path, backend="auto", *, precision="auto", batching=None, backend_config=None)``
    opens an artefact (``Model.load``); a reranker's is refused, naming ``Reranker.load``.
    """

    task: ClassVar[str] = "embed"

    def __init__(self, path: Path, manifest: Manifest, backend: Backend, batching: BatchingConfig) -> None:
        super().__init__(path, manifest, backend, batching)
        self._tokenizer = TextTokenizer(path, manifest)

    # -- the three verbs -------------------------------------------------------------------------

    def prepare(self, texts: Sequence[str], *, instruction: str | None = None,
                truncate: bool = True) -> list[Encoded]:
        """Validate, apply the instruction (query template), tokenize."""
        items = validate_texts(texts)
        if instruction is not None:
            items = [self.manifest.prompts.format_query(t, instruction) for t in items]
        return self._tokenizer.encode(items, truncate=truncate)

    def token_id_format(self) -> TokenIdFormat | None:
        """How token ids sent instead of text become this model's input (None: text only)."""
        return self._tokenizer.token_id_format()

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors ``[n, hidden]`` and pre-normalisation norms ``[n]``, in the order of ``items``."""
        if not items:
            return np.empty((0, self.manifest.hidden_size), np.float32), np.empty((0,), np.float32)
        out = self._run(items)
        vectors, norms = out["sentence_embedding"], out["embedding_norm"]
        if not self.manifest.normalize:
            vectors = l2_normalize(vectors)  # such graphs return raw vectors; the contract is unit + norm
        return vectors, norms

    def finish(self, vectors: np.ndarray, norms: np.ndarray, *, dimensions: int | None = None,
               normalize: bool = True) -> np.ndarray:
        """Matryoshka truncation then renormalisation; ``normalize=False`` gives raw truncated vectors."""
        dims = check_dimensions(dimensions, self.manifest.dimensions_range)
        return finish(vectors, norms, dims, normalize)

    # -- conveniences ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], *, instruction: str | None = None, dimensions: int | None = None,
              normalize: bool = True, truncate: bool = True) -> np.ndarray:
        """float32 ``[n, d]`` in input order. ``instruction``: format the texts as queries with it
        (instruction-tuned models)."""
        dims = check_dimensions(dimensions, self.manifest.dimensions_range)  # fail before any work
        vectors, norms = self.infer(self.prepare(texts, instruction=instruction, truncate=truncate))
        return finish(vectors, norms, dims, normalize)

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None, **kw: Any) -> np.ndarray:
        """Texts as queries, formatted by the manifest's query template (its default instruction if none
        is given). ``embed(texts, instruction=...)`` is the same call with the instruction required."""
        prompts = self.manifest.prompts
        return self.embed([prompts.format_query(t, instruction) for t in validate_texts(texts)], **kw)

    def embed_documents(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        """Texts as documents, formatted by the manifest's document template."""
        prompts = self.manifest.prompts
        return self.embed([prompts.format_document(t) for t in validate_texts(texts)], **kw)

    def embed_iter(self, texts: Iterable[str], *, prompt: str | None = None, instruction: str | None = None,
                   dimensions: int | None = None, normalize: bool = True, truncate: bool = True,
                   window: int = WINDOW) -> Iterator[np.ndarray]:
        """Embed an iterable of any length lazily: float32 blocks ``[<= window, d]`` in input order, equal to
        ``embed`` on the whole. Sorting by length happens within a window of ``window`` texts, so memory
        holds one window (texts, token ids, vectors) whatever the input's length.

        ``prompt``: None formats as ``embed`` (queries when ``instruction`` is given), "query" as
        ``embed_queries``, "document" as ``embed_documents``. See ``embedrt.streaming``.
        """
        blocks = embed_blocks(self, texts, prompt=prompt, instruction=instruction, dimensions=dimensions,
                              normalize=normalize, truncate=truncate, window=window)  # checks options now
        return (block.vectors for block in blocks)

    def info(self) -> ModelInfo:
        """The model and how it runs (a closed Embedder reports its backend as it last ran)."""
        low, high = self.manifest.dimensions_range
        m = self.manifest
        return ModelInfo(name=m.name, architecture=m.architecture, dimensions=high, dimensions_range=(low, high),
                         max_length=m.max_length, pooling=m.pooling, normalize=m.normalize,
                         query_template=m.prompts.query, default_instruction=m.prompts.default_instruction,
                         backend=self._describe_backend(), max_batch_tokens=self.batching.max_batch_tokens,
                         max_batch_size=self.batching.max_batch_size)


__all__ = ["Embedder"]
