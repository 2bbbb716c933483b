"""What every loaded model shares, whatever its task: ``Embedder`` and ``Reranker`` are small heads on it.

Loading (the manifest, refused when its task is another class's; the backend picked and opened;
batching defaults by device; shape limits), running tokenized inputs through the backend (sort,
micro-batch by token budget, pad, run, restore input order), and the lifecycle: thread-safe use,
``close()`` waiting for running batches, the context manager. A subclass adds its tokenizer, its
verbs and the head that reads the outputs (``pooling.py`` for embeddings, ``scoring.py`` for scores).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

import numpy as np

from .backends import Backend, create_backend
from .batching import CPU_BATCHING, collate, plan
from .config import BackendConfig, BatchingConfig
from .errors import ArtefactError, BackendError, UnavailableError
from .info import BackendInfo
from .manifest import Manifest, load_manifest
from .remote import local_artefact
from .tokenizer import Encoded

log = logging.getLogger(__name__)

# Which class loads which task, for the message that refuses the other.
LOADERS = {"embed": ("an embedding model", "Embedder"), "rerank": ("a rerank model", "Reranker")}

M = TypeVar("M", bound="Model")


def open_backend(path: Path, manifest: Manifest, backend: str, config: BackendConfig) -> Backend:
    """Open ``backend``, or for "auto" the fastest that works: TensorRT engine, then ONNX Runtime."""
    if backend != "auto":
        chosen = create_backend(backend, path, manifest, config)
        chosen.open()
        return chosen
    if (path / "engines").is_dir() and config.device != "cpu":
        try:
            engine = create_backend("tensorrt", path, manifest, config)
            engine.open()
            return engine
        except (ImportError, ArtefactError, BackendError) as exc:  # EngineMismatchError is an ArtefactError
            # Not fatal: engines are per GPU and TensorRT version, and ONNX Runtime always works.
            log.warning("no usable TensorRT engine (%s); falling back to ONNX Runtime", exc)
    chosen = create_backend("onnxruntime", path, manifest, config)
    chosen.open()
    return chosen


class Model:
    """One artefact on one backend. Thread-safe; a context manager. Subclasses set ``task``."""

    task: ClassVar[str]

    def __init__(self, path: Path, manifest: Manifest, backend: Backend, batching: BatchingConfig) -> None:
        self.path = path
        self.manifest = manifest
        self.batching = batching
        self._backend: Backend | None = backend
        limits = backend.limits()
        # Never pad past max_length: a bucket beyond it could index past the position table.
        cap = min(n for n in (limits.max_sequence, manifest.max_length) if n)
        self._limits = replace(limits, max_sequence=cap)
        self.backend_name = backend.name
        self.precision = backend.precision
        self._backend_info = backend.describe()
        # close() waits for running batches instead of freeing a session under them.
        self._state = threading.Condition()
        self._running = 0

    @classmethod
    def load(cls: type[M], path: str | Path, backend: str = "auto", *, precision: str = "auto",
             batching: BatchingConfig | None = None, backend_config: BackendConfig | None = None) -> M:
        """Open an artefact directory written by ``embedrt export``, or the artefact at a URL (``s3://...``:
        copied into a local cache first, ``remote.py``)."""
        root = local_artefact(path)
        manifest = load_manifest(root)
        if manifest.task != cls.task:
            (what, loader), wanted = LOADERS[manifest.task], LOADERS[cls.task][0]
            raise ArtefactError(f"{root} is {what}, not {wanted}: load it with embedrt.{loader}.load({str(root)!r})")
        config = backend_config or BackendConfig()
        if precision != "auto":
            config = replace(config, precision=precision)
        opened = open_backend(root, manifest, backend, config)
        if batching is None:  # the defaults differ by device; see batching.CPU_BATCHING
            batching = CPU_BATCHING if opened.device == "cpu" else BatchingConfig()
        try:
            return cls(root, manifest, opened, batching)
        except BaseException:
            opened.close()
            raise

    def _run(self, items: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Every graph output for ``items``, one row per item in their order (an empty dict for none).

        Sorted by length, cut into micro-batches by token budget, padded on the manifest's side, run,
        and scattered back, so an item's row does not depend on its batch-mates.
        """
        if not items:
            return {}
        m = self.manifest
        micros = plan([e.length for e in items], self.batching, self._limits)
        # Collated lazily: a GPU backend pipelines, collating the next batch while one runs.
        batches = (collate([items[i].ids for i in micro.indices], micro.sequence, m.pad_token_id, m.padding_side,
                           _type_rows(items, micro.indices)) for micro in micros)
        out: dict[str, np.ndarray] = {}
        with self._in_flight() as backend, closing(backend.run_many(batches)) as outputs:  # closing: a
            for micro, got in zip(micros, outputs, strict=True):  # failure here still frees what is in flight
                rows = list(micro.indices)
                for name, value in got.items():
                    if name not in out:
                        out[name] = np.empty((len(items), *value.shape[1:]), dtype=np.float32)
                    out[name][rows] = value
        return out

    def _describe_backend(self) -> BackendInfo:
        """The backend as it runs now (a closed model reports it as it last ran)."""
        backend = self._backend
        if backend is not None:
            self._backend_info = backend.describe()
        return self._backend_info

    # -- lifecycle -------------------------------------------------------------------------------

    @contextmanager
    def _in_flight(self) -> Iterator[Backend]:
        with self._state:
            if self._backend is None:
                raise UnavailableError(f"this {type(self).__name__} is closed; load the artefact again")
            backend = self._backend
            self._running += 1
        try:
            yield backend
        finally:
            with self._state:
                self._running -= 1
                self._state.notify_all()

    def close(self) -> None:
        """Free the backend once running batches have finished. Idempotent."""
        with self._state:
            backend, self._backend = self._backend, None  # first: no new batch starts from here on
            self._state.wait_for(lambda: self._running == 0)
        if backend is not None:
            backend.close()

    def __enter__(self: M) -> M:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.manifest.name!r}, backend={self.backend_name!r}, "
                f"precision={self.precision!r})")


def _type_rows(items: Sequence[Encoded], indices: Sequence[int]) -> list[np.ndarray] | None:
    """The token type ids of a micro-batch's rows, where its items have them (text-pair rerankers)."""
    if items[indices[0]].type_ids is None:
        return None
    return [items[i].type_ids for i in indices]  # type: ignore[misc]


__all__ = ["Model", "open_backend"]
