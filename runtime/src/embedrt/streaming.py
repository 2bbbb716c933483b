"""Embedding an iterable of any length in bounded memory: ``Embedder.embed_iter`` and the bulk job.

Texts are taken ``window`` at a time; each window goes through the embedder's three verbs (prepare,
infer, finish) as one ``embed`` call would, so sorting by length (and the micro-batching that
follows) happens within the window, and the window's vectors come out in input order. At most one
window of texts, their token ids and their vectors are held at once: with the default window of
4,096 texts that is 4,096 x (text + ids + one vector), whatever the length of the iterable.

An item's vector does not depend on its batch-mates (``Model._run``), so cutting the input into
windows changes which texts share a micro-batch, not the results: they equal ``embed`` on the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputTooLongError, InvalidInputError, InvalidTextError
from .pooling import check_dimensions, finish
from .tokenizer import validate_texts

if TYPE_CHECKING:
    from .embedder import Embedder

# Texts per window. Large enough that sorting within it pads about as little as sorting everything
# (CPU micro-batches hold 32 rows, GPU ones at most a few hundred), small enough that its token ids
# stay in the tens of MB for texts of a few hundred tokens.
WINDOW = 4096
PROMPTS = (None, "query", "document")


@dataclass(frozen=True)
class Block:
    """One window's result: ``vectors`` float32 ``[n, d]`` in input order, ``lengths`` ``[n]`` the tokens
    each text ran as (after the prompt and truncation, special tokens included)."""

    vectors: np.ndarray
    lengths: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def embed_blocks(embedder: Embedder, texts: Iterable[str], *, prompt: str | None = None,
                 instruction: str | None = None, dimensions: int | None = None, normalize: bool = True,
                 truncate: bool = True, window: int = WINDOW) -> Iterator[Block]:
    """Embed ``texts`` lazily, one ``Block`` per window of ``window`` texts (the last may be shorter).

    ``prompt``: None formats as ``embed`` does (as queries when ``instruction`` is given); "query" as
    ``embed_queries`` (the model's default instruction when none is given); "document" as
    ``embed_documents``. Options are checked here, before the first text is read; the blocks come
    as the returned iterator is consumed.
    """
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError("pass an iterable of strings, not a single string (wrap it: [text])")
    if not isinstance(texts, Iterable):
        raise InvalidInputError(f"pass an iterable of strings, not {type(texts).__name__}")
    if prompt not in PROMPTS:
        raise InvalidInputError(f"prompt must be None, 'query' or 'document', not {prompt!r}")
    if window < 1:
        raise InvalidInputError(f"window must be at least 1 text, not {window}")
    dims = check_dimensions(dimensions, embedder.manifest.dimensions_range)
    prompts = embedder.manifest.prompts
    fmt: Callable[[str], str] | None = None
    if prompt == "document":
        if instruction is not None:
            raise InvalidInputError("documents take no instruction; leave it out or embed them as queries")
        fmt = prompts.format_document
    elif prompt == "query" or instruction is not None:
        prompts.check_instruction(instruction)  # refused here, before any text is read
        fmt = partial(prompts.format_query, instruction=instruction)
    return _blocks(embedder, iter(texts), fmt, partial(finish, dimensions=dims, normalize=normalize), truncate, window)


def _blocks(embedder: Embedder, source: Iterator[str], fmt: Callable[[str], str] | None,
            done: Callable[[np.ndarray, np.ndarray], np.ndarray], truncate: bool, window: int) -> Iterator[Block]:
    start = 0
    while chunk := list(islice(source, window)):
        try:
            items = validate_texts(chunk)
        except InvalidTextError as exc:  # name the text by its place in the whole iterable
            raise InvalidTextError(start + exc.index, exc.detail) from None
        if fmt is not None:
            items = [fmt(t) for t in items]
        try:
            encoded = embedder.prepare(items, truncate=truncate)
        except InputTooLongError as exc:
            raise InputTooLongError(start + exc.index, exc.tokens, exc.limit, at_least=exc.at_least) from None
        lengths = np.fromiter((e.length for e in encoded), dtype=np.int64, count=len(encoded))
        yield Block(done(*embedder.infer(encoded)), lengths)
        start += len(chunk)


__all__ = ["PROMPTS", "WINDOW", "Block", "embed_blocks"]
