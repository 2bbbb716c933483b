"""Texts for INT8 calibration and for the quality gate, tokenized the way the runtime tokenizes them.

The shipped sets (``data/calibration.jsonl``, ``data/heldout.jsonl``) are disjoint. Queries are
stored raw with an instruction and formatted with the artefact's own query template, so a Qwen3 artefact
calibrates on ``Instruct: ...\\nQuery:...`` strings and a BERT one on plain text.

A reranker's sets are query lists (``data/rerank_calibration.jsonl``, ``data/rerank_heldout.jsonl``,
made from the two text sets by ``scripts/make_text_sets.py``, so disjoint too): a query, its
instruction and its documents. Their pairs are tokenized by the runtime's own ``PairTokenizer`` and
padded by its ``collate``, on the manifest's padding side: the graph sees what it sees in serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from embedrt.batching import collate
from embedrt.manifest import Manifest
from embedrt.pairs import PairTokenizer

from ..errors import QuantizationError

if TYPE_CHECKING:
    from .pipeline import QuantizeOptions

DATA = Path(__file__).parent / "data"
SHIPPED = {"calibration": DATA / "calibration.jsonl", "heldout": DATA / "heldout.jsonl"}
SHIPPED_LISTS = {"calibration": DATA / "rerank_calibration.jsonl", "heldout": DATA / "rerank_heldout.jsonl"}

Feed = dict[str, np.ndarray]
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    text: str
    kind: str = "document"  # "query" texts get the model's query template
    instruction: str | None = None  # for queries of instruction-tuned models


@dataclass(frozen=True)
class QueryList:
    """One query and the documents a reranker ranks for it."""

    query: str
    documents: tuple[str, ...]
    instruction: str | None = None  # for instruction-tuned rerankers (Qwen3-Reranker)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise QuantizationError(f"calibration file {path} does not exist")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise QuantizationError(f"{path}:{number} is not JSON ({exc.msg}); use one object per line") from exc


def load_records(path: Path) -> list[Record]:
    """A .txt file (one text per line) or .jsonl (``{"text", "kind"?, "instruction"?}`` or a bare string;
    ``"task"`` is the earlier name of ``"instruction"``, as in the shipped sets)."""
    lines = _lines(path)
    if path.suffix != ".jsonl":
        return [Record(line) for line in lines]
    records = []
    for number, line in enumerate(lines, 1):
        item = _json(path, number, line)
        if isinstance(item, str):
            records.append(Record(item))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            records.append(Record(item["text"], item.get("kind", "document"),
                                  item.get("instruction", item.get("task"))))  # "task": the earlier name
        else:
            raise QuantizationError(f"{path}:{number} needs a \"text\" string field")
    return records


def load_lists(path: Path) -> list[QueryList]:
    """A .jsonl file of query lists: ``{"query": str, "documents": [str, ...], "instruction"?: str}``."""
    if path.suffix != ".jsonl":
        raise QuantizationError(f"a reranker calibrates on query lists: pass a .jsonl file of "
                                f"{{\"query\", \"documents\": [...], \"instruction\"?}} objects, not {path.name}")
    lists = []
    for number, line in enumerate(_lines(path), 1):
        item = _json(path, number, line)
        documents = item.get("documents") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("query"), str) and isinstance(documents, list)
                and documents and all(isinstance(d, str) for d in documents)):
            raise QuantizationError(f"{path}:{number} needs a \"query\" string and a non-empty \"documents\" "
                                    "list of strings")
        instruction = item.get("instruction")
        lists.append(QueryList(item["query"], tuple(documents), instruction if isinstance(instruction, str) else None))
    return lists


def pair_feeds(artefact: Path, manifest: Manifest, lists: Sequence[QueryList], batch_size: int
               ) -> tuple[list[Feed], list[int]]:
    """Every (query, document) pair of ``lists`` as graph feeds, in batches of similar length, and the pair
    (list by list, document by document) that each row of the concatenated batches holds.

    Tokenized by the runtime's ``PairTokenizer`` (instructions only where the reranker takes one, as
    ``format_records`` does for queries) and padded by its ``collate`` on the manifest's side."""
    assert manifest.rerank is not None
    tokenizer = PairTokenizer(artefact, manifest)
    takes_instruction = manifest.rerank.prompt.takes_instruction
    items = [item for q in lists for item in tokenizer.encode(
        [(q.query, d) for d in q.documents], instruction=q.instruction if takes_instruction else None)]
    order = sorted(range(len(items)), key=lambda i: items[i].length)
    feeds = []
    for start in range(0, len(order), batch_size):
        rows = [items[i] for i in order[start: start + batch_size]]
        types = [r.type_ids for r in rows] if rows[0].type_ids is not None else None
        batch = collate([r.ids for r in rows], max(r.length for r in rows), manifest.pad_token_id,
                        manifest.padding_side, types)  # type: ignore[arg-type]
        feeds.append(batch.feed(manifest.input_names))
    return feeds, order


def load_sets(options: QuantizeOptions, load: Callable[[Path], list[T]], shipped: dict[str, Path]
              ) -> tuple[list[T], list[T]]:
    """The calibration set (``options.calibration``, or the shipped one) and the shipped held-out set, read
    by ``load``, each cut to its limit (``limit_calibration``, ``limit_heldout``: tests, quick looks)."""
    calib = load(options.calibration or shipped["calibration"])[: options.limit_calibration or None]
    if not calib:
        raise QuantizationError("the calibration set is empty")
    return calib, load(shipped["heldout"])[: options.limit_heldout or None]


def format_records(records: Sequence[Record], manifest: Manifest) -> list[str]:
    """Apply the artefact's prompt templates: the model sees what it will see in serving."""
    prompts = manifest.prompts
    # A set written for an instruction model (records with an instruction) also calibrates one without.
    return [prompts.format_query(r.text, r.instruction if prompts.takes_instruction else None) if r.kind == "query"
            else prompts.format_document(r.text) for r in records]


class TextEncoder:
    """``tokenizer.json`` of the artefact with its max length and right padding, as the runtime uses it."""

    def __init__(self, artefact: Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(artefact / "tokenizer.json"))
        self._tok.no_padding()
        # Truncation keeps room for the appended end-of-text token that last-token pooling reads.
        self._tok.enable_truncation(manifest.max_length)
        self._pad = manifest.pad_token_id

    def lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> Feed:
        encs = self._tok.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for row, enc in enumerate(encs):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def batches(self, texts: Sequence[str], batch_size: int) -> list[Feed]:
        """Batches of similar length (little padding); order does not matter to range statistics."""
        lengths = self.lengths(texts)
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        return [self.encode([texts[i] for i in order[s: s + batch_size]]) for s in range(0, len(order), batch_size)]


class CalibrationReader(CalibrationDataReader):
    """Feeds pre-tokenized batches to ONNX Runtime's calibrator, with a progress bar.

    ``set_range`` lets the calibrator take one batch at a time (``CalibStridedMinMax``), so
    histograms are merged batch by batch: batches may differ in length and memory stays bounded.
    """

    def __init__(self, batches: Sequence[Feed], desc: str = "calibrating", show_progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self._batches = list(batches)
        self._range = (0, len(self._batches))
        self._iter: Iterator[Feed] | None = None
        self._bar: Any = tqdm(total=len(self._batches), desc=desc, unit="batch", disable=not show_progress)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (start_index, end_index)
        self._iter = None

    def get_next(self) -> Feed | None:
        if self._iter is None:
            self._iter = iter(self._batches[self._range[0]: self._range[1]])
        batch = next(self._iter, None)
        if batch is None:
            self._iter = None  # let the next range start afresh
        else:
            self._bar.update(1)
        return batch

    def close(self) -> None:
        self._bar.close()
