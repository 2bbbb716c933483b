"""Text -> token ids, exactly as the exported model's own tokenizer does it.

The artefact's ``tokenizer.json`` carries the post-processor that appends the end-of-text token
(Qwen3) or CLS/SEP (BERT). Truncation is done by the ``tokenizers`` library because it reserves
room for those post-processor tokens: the pooled token survives truncation. Padding is not done
here; the batcher pads once it knows the micro-batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import ArtefactError, InputTooLongError, InvalidInputError
from .manifest import Manifest


@dataclass(frozen=True, eq=False)
class Encoded:
    """One tokenized text: post-processed, truncated int64 ids (the mask is all ones)."""

    ids: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def validate_texts(texts: Sequence[str]) -> list[str]:
    """A list of str, or InvalidInputError naming the first bad index."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError("pass a list of strings, not a single string (wrap it: [text])")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidInputError(f"input {i} is {type(text).__name__}, not str; pass text only")
    return out


class TextTokenizer:
    """Thread-safe: the underlying tokenizers are configured once and never mutated afterwards."""

    def __init__(self, artefact: Path, manifest: Manifest) -> None:
        path = Path(artefact) / "tokenizer.json"
        if not path.is_file():
            raise ArtefactError(f"{path} is missing; the artefact is incomplete, re-export the model")
        self._json = path.read_text(encoding="utf-8")
        self.max_length = manifest.max_length
        self._truncating = self._build(truncate=True)
        self._untruncated: Tokenizer | None = None  # built on first over-long text with truncate=False
        self._lock = threading.Lock()

    def _build(self, truncate: bool) -> Tokenizer:
        tok = Tokenizer.from_str(self._json)
        tok.no_padding()  # tokenizer.json may ship fixed padding (MiniLM: 128); the batcher pads instead
        if truncate:
            tok.enable_truncation(self.max_length)
        else:
            tok.no_truncation()
        return tok

    def encode(self, texts: Sequence[str], truncate: bool = True) -> list[Encoded]:
        """Tokenize already-formatted texts; ``truncate=False`` raises on the first over-long one."""
        if not texts:
            return []
        encodings = self._truncating.encode_batch(list(texts))
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise InputTooLongError(i, self.count_tokens(texts[i]), self.max_length)
        return [Encoded(np.asarray(enc.ids, dtype=np.int64)) for enc in encodings]

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` without truncation (special tokens included)."""
        with self._lock:
            if self._untruncated is None:
                self._untruncated = self._build(truncate=False)
        return len(self._untruncated.encode(text).ids)


__all__ = ["Encoded", "TextTokenizer", "validate_texts"]
