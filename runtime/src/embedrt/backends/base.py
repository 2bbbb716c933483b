"""The backend interface: open / close (context manager), accepted shapes, ``run(batch)`` / ``run_many``."""

from __future__ import annotations

import abc
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from ..config import BackendConfig
from ..errors import ArtefactError
from ..info import BackendInfo
from ..manifest import Manifest

# The graph inputs a Batch carries, by name (a manifest's ``inputs`` are some of these, in its order).
BATCH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Batch:
    """The one thing that crosses from the runtime core to a backend.

    ``input_ids`` and ``attention_mask`` are int64 ``[rows, sequence]``, padded on the manifest's
    padding side to a bucketed sequence length; ``lengths`` holds each row's real token count.
    ``token_type_ids`` (same shape, 0 on padding) is there for the graphs that take it: BERT-family
    cross-encoders, whose tokenizer marks the document's tokens 1.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    token_type_ids: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        rows, seq = self.input_ids.shape
        return int(rows), int(seq)

    @staticmethod
    def check_inputs(names: Sequence[str]) -> None:
        """ArtefactError unless a Batch carries every input in ``names`` (a backend checks this at open)."""
        unknown = [n for n in names if n not in BATCH_INPUTS]
        if unknown:
            raise ArtefactError(f"the graph takes inputs {unknown} that embedrt does not make "
                                f"(it makes {', '.join(BATCH_INPUTS)}); re-export the model")

    def feed(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs by name (``manifest.input_names``). A graph that takes token type ids
        gets zeros where the batch has none, as transformers gives a BERT model called without them."""
        self.check_inputs(names)
        feed = {}
        for name in names:
            value = getattr(self, name)
            feed[name] = np.zeros_like(self.input_ids) if value is None else value
        return feed


@dataclass(frozen=True)
class ShapeLimits:
    """What a backend accepts. ``None`` means unbounded (ONNX Runtime); engines have profile limits."""

    max_batch: int | None = None
    max_sequence: int | None = None
    # Sequence lengths the backend is tuned for (TensorRT profiles); batches are padded up to one.
    sequence_buckets: tuple[int, ...] | None = None


class Backend(abc.ABC):
    """Runs padded batches through one artefact graph or engine."""

    name: str = "backend"

    def __init__(self, artefact: Path, manifest: Manifest, config: BackendConfig) -> None:
        self.artefact = Path(artefact)
        self.manifest = manifest
        self.config = config

    @property
    @abc.abstractmethod
    def precision(self) -> str:
        """The precision actually running: fp32, fp16 or int8."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where it runs: "cpu" or "cuda"."""

    @abc.abstractmethod
    def open(self) -> None:
        """Load the graph / engine and allocate what ``run`` needs. Idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free everything ``open`` allocated. Idempotent."""

    @abc.abstractmethod
    def limits(self) -> ShapeLimits:
        """The batch shapes ``run`` accepts."""

    @abc.abstractmethod
    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Return every graph output the manifest lists (``manifest.output_names``), by name: for an
        embedder ``sentence_embedding`` float32 ``[rows, hidden]`` and ``embedding_norm`` ``[rows]``, for a
        reranker ``score`` and ``logit`` ``[rows]``.

        Raises ``BackendError`` on failure; a failure affects this batch only.
        """

    def run_many(self, batches: Iterable[Batch]) -> Generator[dict[str, np.ndarray], None, None]:
        """``run`` on each batch, outputs in order. ``batches`` is consumed lazily, so a backend that
        can overlap batches (TensorRT: several contexts) prepares the next while one runs."""
        for batch in batches:
            yield self.run(batch)

    def describe(self) -> BackendInfo:
        """What runs, where, and any fallback taken (for ``Info``, logs and benchmarks)."""
        return BackendInfo(backend=self.name, precision=self.precision, device=self.device)

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
