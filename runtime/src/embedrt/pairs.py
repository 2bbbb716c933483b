"""(query, document) pairs -> reranker input ids, exactly as the model cards build them.

Two layouts, read from the manifest's ``PairPrompt``:

- "template" (Qwen3-Reranker): the prefix and suffix are tokenized once without special tokens; the
  middle (``PairPrompt.format_pair``: instruction, query, document) is tokenized with the tokenizer's
  special tokens and truncated from the right to ``max_length - len(prefix) - len(suffix)``; the
  input is prefix + middle + suffix, so truncation never cuts the prompt around the pair.
- "text_pair" (BERT-family cross-encoders): the tokenizer's own pair encoding (its special tokens and
  token type ids), truncated longest first to ``max_length``, as ``tokenizer(query, document,
  truncation=True)`` does.

Work per pair is bounded as for texts (``tokenizer.CHARS_PER_TOKEN``): a huge query or document is
cut to as many characters as give its leading tokens exactly before it is tokenized.

``windows`` serves ``Reranker.rerank(long_documents="max_window")``: a document too long for one input
is cut into token windows that each fit beside the query and prompt (``window_size``), overlapping
by a quarter window, so that a passage cut by one window's edge lies whole inside the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import ArtefactError, InputTooLongError, InvalidFieldError
from .manifest import Manifest
from .tokenizer import Encoded, TextTokenizer, read_tokenizer_json, settled_cut, text_problem

# Tokens kept free in each window: a window's text tokenized beside the query can take a few more
# tokens than its slice of the document did (the seams between words re-merge).
WINDOW_MARGIN = 8
Pair = tuple[str, str]


def validate_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """A list of (query, document) string pairs, or InvalidFieldError (field ``pairs``) naming the first bad one."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InvalidFieldError("pairs", f"pass a list of (query, document) pairs, not {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidFieldError("pairs", f"pair {i} is {type(pair).__name__}, not a (query, document) pair")
        for part, text in zip(("query", "document"), pair, strict=True):
            problem = text_problem(text)
            if problem:
                raise InvalidFieldError("pairs", f"the {part} of pair {i} {problem}")
        out.append((pair[0], pair[1]))
    return out


def _tokenizer(json: str, truncate_at: int | None, strategy: str = "longest_first") -> Tokenizer:
    tok = Tokenizer.from_str(json)
    tok.no_padding()  # the batcher pads
    if truncate_at is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(truncate_at, strategy=strategy)
    return tok


class PairTokenizer:
    """Thread-safe: its tokenizers are configured once and never mutated afterwards."""

    def __init__(self, artefact: Path, manifest: Manifest) -> None:
        if manifest.rerank is None:
            raise ArtefactError(f"{artefact} is no reranker (task {manifest.task!r}); load it with Embedder")
        self.prompt = manifest.rerank.prompt
        self.max_length = manifest.max_length
        self._json = read_tokenizer_json(artefact)
        self._plain = _tokenizer(self._json, None)  # windows' offsets, counts on error paths
        if self.prompt.encoding == "template":
            self.prefix = self._plain.encode(self.prompt.prefix, add_special_tokens=False).ids
            self.suffix = self._plain.encode(self.prompt.suffix, add_special_tokens=False).ids
            room = self.max_length - len(self.prefix) - len(self.suffix)
            if room < 16:
                raise ArtefactError(f"the reranker prompt takes {self.max_length - room} of the model's "
                                    f"{self.max_length} tokens, leaving no room for a pair; re-export with a larger "
                                    "--max-length")
            self._middle = TextTokenizer(artefact, manifest, max_length=room)
        else:
            self.prefix = self.suffix = []
            self._pair = _tokenizer(self._json, self.max_length)
            self._side = _tokenizer(self._json, self.max_length)  # one side alone: where to cut a huge one

    @property
    def room(self) -> int:
        """Tokens for the filled template (or the pair, with its special tokens)."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    def encode(self, pairs: Sequence[Pair], instruction: str | None = None, truncate: bool = True) -> list[Encoded]:
        """Tokenize validated pairs; ``truncate=False`` raises InputTooLongError on the first over-long one."""
        self.prompt.check_instruction(instruction)
        if not pairs:
            return []
        if self.prompt.encoding == "template":
            return self._encode_template(pairs, instruction, truncate)
        return self._encode_text_pairs(pairs, truncate)

    def _encode_template(self, pairs: Sequence[Pair], instruction: str | None, truncate: bool) -> list[Encoded]:
        middles = [self.prompt.format_pair(q, d, instruction) for q, d in pairs]
        try:
            encoded = self._middle.encode(middles, truncate=truncate)
        except InputTooLongError as exc:
            raise InputTooLongError(exc.index, exc.tokens + len(self.prefix) + len(self.suffix), self.max_length,
                                    at_least=exc.at_least, what="pair") from None
        prefix, suffix = np.asarray(self.prefix, np.int64), np.asarray(self.suffix, np.int64)
        return [Encoded(np.concatenate([prefix, e.ids, suffix]), truncated=e.truncated) for e in encoded]

    def _encode_text_pairs(self, pairs: Sequence[Pair], truncate: bool) -> list[Encoded]:
        # Longest-first keeps at most max_length tokens of either side, so each side's leading
        # max_length tokens decide the result: a side longer than that is cut where they are exact.
        cut = [(q[:settled_cut(self._side, q, self.max_length)], d[:settled_cut(self._side, d, self.max_length)])
               for q, d in pairs]
        encodings = self._pair.encode_batch(cut)
        out = []
        for i, (enc, (q, d)) in enumerate(zip(encodings, cut, strict=True)):
            was_cut = len(q) < len(pairs[i][0]) or len(d) < len(pairs[i][1])
            truncated = bool(enc.overflowing) or was_cut
            if truncated and not truncate:
                tokens = len(self._plain.encode(q, d).ids)
                raise InputTooLongError(i, tokens, self.max_length, at_least=was_cut, what="pair")
            out.append(Encoded(np.asarray(enc.ids, np.int64), np.asarray(enc.type_ids, np.int64), truncated))
        return out

    # -- long documents ------------------------------------------------------------------------------

    def window_size(self, query: str, instruction: str | None = None) -> int:
        """Document tokens per window: what the query, prompt and special tokens leave, less
        ``WINDOW_MARGIN``; at least a quarter of the input (a longer query is then truncated as usual)."""
        if self.prompt.encoding == "template":
            taken = self.encode([(query, "")], instruction)[0].length
        else:
            taken = len(self._pair.encode(query[:settled_cut(self._side, query, self.max_length)], "").ids)
        return max(self.max_length - taken - WINDOW_MARGIN, self.room // 4)

    def windows(self, query: str, document: str, instruction: str | None = None) -> list[Encoded]:
        """``document`` in windows of ``window_size`` tokens, each a quarter overlapping the last, each
        encoded with ``query`` as a pair; one window when the document fits."""
        size = self.window_size(query, instruction)
        offsets = self._plain.encode(document, add_special_tokens=False).offsets
        stride = size - size // 4
        starts = [0]
        while starts[-1] + size < len(offsets):
            starts.append(starts[-1] + stride)
        texts = [document[offsets[s][0]:offsets[min(s + size, len(offsets)) - 1][1]] if offsets else document
                 for s in starts]
        return self.encode([(query, text) for text in texts], instruction)


__all__ = ["WINDOW_MARGIN", "Pair", "PairTokenizer", "validate_pairs"]
