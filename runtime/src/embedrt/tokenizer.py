"""Text -> token ids, exactly as the exported model's own tokenizer does it.

The artefact's ``tokenizer.json`` carries the post-processor that appends the end-of-text token
(Qwen3) or CLS/SEP (BERT). Truncation is done by the ``tokenizers`` library because it reserves
room for those post-processor tokens: the pooled token survives truncation. Padding is not done
here; the batcher pads once it knows the micro-batch.

Work per text is bounded: a text is cut at ``max_length * CHARS_PER_TOKEN`` characters before it
is tokenized (a 10 MB text would otherwise cost seconds of tokenizer time and hundreds of MB only
to be truncated), and the cut is widened only when it could change the result (see ``_settled``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import ArtefactError, InputTooLongError, InvalidInputError, InvalidTextError
from .manifest import Manifest

# First cut of a text, in characters per token of max_length. Natural text averages ~4 characters
# a token, so the cut leaves the tokens kept far from its edge; a cut that fits (or whose kept
# tokens reach near its edge) is doubled, so this constant costs time, never exactness.
CHARS_PER_TOKEN = 8


@dataclass(frozen=True, eq=False)
class Encoded:
    """One tokenized input: post-processed, truncated int64 ids (the mask is all ones).

    ``type_ids``: token type ids of the same length, for inputs made of two segments (a text-pair
    reranker's query and document); ``truncated``: tokens were cut to fit the model's maximum length.
    """

    ids: np.ndarray
    type_ids: np.ndarray | None = None
    truncated: bool = False

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def validate_texts(texts: Sequence[str]) -> list[str]:
    """A list of str that encodes as UTF-8, or InvalidInputError (InvalidTextError naming the first bad index)."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError("pass a list of strings, not a single string (wrap it: [text])")
    if not isinstance(texts, Iterable):
        raise InvalidInputError(f"pass a list of strings, not {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        problem = text_problem(text)
        if problem:
            raise InvalidTextError(i, problem)
    return out


def text_problem(text: object) -> str | None:
    """Why ``text`` is no text a tokenizer takes (as a phrase: "is int, not str; ..."), or None."""
    if not isinstance(text, str):
        return f"is {type(text).__name__}, not str; pass text only"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a bad JSON escape "\ud800"
            return (f"is not valid UTF-8 text: a lone surrogate U+{ord(text[exc.start]):04X} "
                    f"at character {exc.start}")
    return None


class TextTokenizer:
    """Thread-safe: the underlying tokenizers are configured once and never mutated afterwards."""

    def __init__(self, artefact: Path, manifest: Manifest, max_length: int | None = None) -> None:
        """``max_length``: tokens per text, special tokens included (default: the manifest's)."""
        self._json = read_tokenizer_json(artefact)
        self.max_length = manifest.max_length if max_length is None else max_length
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
        first = self.max_length * CHARS_PER_TOKEN
        cuts = [min(len(text), first) for text in texts]
        encodings = self._truncating.encode_batch([text[:cut] for text, cut in zip(texts, cuts, strict=True)])
        for i, text in enumerate(texts):
            while not _settled(encodings[i], cuts[i], len(text)):
                cuts[i] = min(len(text), cuts[i] * 2)
                encodings[i] = self._truncating.encode(text[:cuts[i]])
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    cut = cuts[i] < len(texts[i])
                    raise InputTooLongError(i, self.count_tokens(texts[i][:cuts[i]]), self.max_length, at_least=cut)
        return [Encoded(np.asarray(enc.ids, dtype=np.int64), truncated=bool(enc.overflowing)) for enc in encodings]

    def token_id_format(self) -> TokenIdFormat | None:
        """How client-sent token ids become model input for this tokenizer (``TokenIdFormat.probe``)."""
        return TokenIdFormat.probe(self._truncating, self.max_length)

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` without truncation (special tokens included)."""
        with self._lock:
            if self._untruncated is None:
                self._untruncated = self._build(truncate=False)
        return len(self._untruncated.encode(text).ids)


def read_tokenizer_json(artefact: Path) -> str:
    """The artefact's ``tokenizer.json``, or ArtefactError."""
    path = Path(artefact) / "tokenizer.json"
    if not path.is_file():
        raise ArtefactError(f"{path} is missing; the artefact is incomplete, re-export the model")
    return path.read_text(encoding="utf-8")


def settled_cut(tok: Tokenizer, text: str, max_length: int) -> int:
    """How many leading characters of ``text`` give its first ``max_length`` tokens exactly (``tok``
    truncates at ``max_length``): the whole text when it is short, else a cut widened until settled."""
    cut = min(len(text), max_length * CHARS_PER_TOKEN)
    if cut == len(text):
        return cut
    encoding = tok.encode(text[:cut])
    while not _settled(encoding, cut, len(text)):
        cut = min(len(text), cut * 2)
        encoding = tok.encode(text[:cut])
    return cut


def _settled(encoding: Any, cut: int, length: int) -> bool:
    """Whether tokenizing the first ``cut`` of ``length`` characters gave the whole text's result.

    Either the cut is the whole text, or it holds more than max_length tokens and the kept ones end
    in its first three quarters: far from the cut, where tokenizing is local (pre-tokenizers split
    words without looking far ahead), so the rest of the text cannot change them.
    """
    if cut >= length:
        return True
    if not encoding.overflowing:
        return False  # the cut text fits: the whole text may still fit, so look at more of it
    kept_end = max((end for _, end in encoding.offsets), default=0)
    return kept_end <= cut - cut // 4


class TokenIdFormat:
    """Token ids sent by a client (OpenAI's ``input`` may be ids) -> what the model sees.

    The ids are taken as the model's own vocabulary with no special tokens, as tiktoken-style clients
    send them; truncation and the special tokens the tokenizer's post-processor adds to text (the
    end-of-text token for Qwen3, CLS/SEP for BERT) are applied as for text. Those specials are read
    from the artefact's tokenizer.json by tokenizing a probe with and without them.
    """

    def __init__(self, prefix: Sequence[int], suffix: Sequence[int], vocab_size: int, max_length: int) -> None:
        self.prefix, self.suffix = tuple(prefix), tuple(suffix)
        self.vocab_size, self.max_length = vocab_size, max_length
        self.room = max_length - len(self.prefix) - len(self.suffix)

    @classmethod
    def probe(cls, tok: Tokenizer, max_length: int) -> TokenIdFormat | None:
        """What ``tok``'s post-processor adds around a short text; None when it does not simply wrap the
        ids (then only text is accepted)."""
        probe = "hello world"  # far shorter than any max_length: truncation, if set, does not apply
        plain = tok.encode(probe, add_special_tokens=False).ids
        full = tok.encode(probe).ids
        for start in range(len(full) - len(plain) + 1):
            if plain and full[start:start + len(plain)] == plain:
                return cls(full[:start], full[start + len(plain):], tok.get_vocab_size(with_added_tokens=True),
                           max_length)
        return None

    def encode(self, sequences: Sequence[Sequence[int]], truncate: bool = True) -> list[Encoded]:
        """Check each id against the vocabulary, truncate (keeping the specials), add the specials."""
        out = []
        for i, ids in enumerate(sequences):
            array = np.asarray(ids, dtype=np.int64)
            if array.ndim != 1 or array.size == 0:
                raise InvalidTextError(i, "is an empty list of token ids; send at least one id")
            bad = np.flatnonzero((array < 0) | (array >= self.vocab_size))
            if bad.size:
                raise InvalidTextError(i, f"holds token id {int(array[bad[0]])} at position {int(bad[0])}, outside "
                                       f"this model's vocabulary of {self.vocab_size} ids (0 to {self.vocab_size - 1})")
            if array.size > self.room:
                if not truncate:
                    raise InputTooLongError(i, array.size + len(self.prefix) + len(self.suffix), self.max_length)
                array = array[:self.room]
            out.append(Encoded(np.concatenate([np.asarray(self.prefix, np.int64), array,
                                               np.asarray(self.suffix, np.int64)])))
        return out


__all__ = ["CHARS_PER_TOKEN", "Encoded", "TextTokenizer", "TokenIdFormat", "read_tokenizer_json", "settled_cut",
           "text_problem", "validate_texts"]
