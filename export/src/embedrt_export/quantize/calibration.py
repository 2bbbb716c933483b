"""Texts for INT8 calibration and for the quality gate, tokenized the way the runtime tokenizes them.

The shipped sets (``data/calibration.jsonl``, ``data/heldout.jsonl``) are disjoint. Queries are
stored raw with an instruction and formatted with the artefact's own query template, so a Qwen3 artefact
calibrates on ``Instruct: ...\\nQuery:...`` strings and a BERT one on plain text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from embedrt.manifest import Manifest

from ..errors import QuantizationError

DATA = Path(__file__).parent / "data"
SHIPPED = {"calibration": DATA / "calibration.jsonl", "heldout": DATA / "heldout.jsonl"}

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Record:
    text: str
    kind: str = "document"  # "query" texts get the model's query template
    instruction: str | None = None  # for queries of instruction-tuned models


def load_records(path: Path) -> list[Record]:
    """A .txt file (one text per line) or .jsonl (``{"text", "kind"?, "instruction"?}`` or a bare string;
    ``"task"`` is the earlier name of ``"instruction"``, as in the shipped sets)."""
    if not path.is_file():
        raise QuantizationError(f"calibration file {path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [Record(line) for line in lines]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuantizationError(f"{path}:{number} is not JSON ({exc.msg}); use one object per line") from exc
        if isinstance(item, str):
            records.append(Record(item))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            records.append(Record(item["text"], item.get("kind", "document"),
                                  item.get("instruction", item.get("task"))))  # "task": the earlier name
        else:
            raise QuantizationError(f"{path}:{number} needs a \"text\" string field")
    return records


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
