"""The backend interface: open / close (context manager), accepted shapes, ``run(batch)`` / ``run_many``."""

from __future__ import annotations

import abc
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from ..config import BackendConfig
from ..info import BackendInfo
from ..manifest import Manifest


@dataclass(frozen=True)
class Batch:
    """The one thing that crosses from the runtime core to a backend.

    ``input_ids`` and ``attention_mask`` are int64 ``[rows, sequence]``, padded on the manifest's
    padding side to a bucketed sequence length; ``lengths`` holds each row's real token count.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        rows, seq = self.input_ids.shape
        return int(rows), int(seq)


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
        """Return the graph outputs by name; at least ``sentence_embedding`` float32 ``[rows, hidden]``.

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
