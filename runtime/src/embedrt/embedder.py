"""``Embedder``: the facade users import. Texts in, float32 vectors out, in input order.

The work is split in three verbs so that a server can run them at different places (tokenize on
request threads, batch across requests, finish per request): ``prepare`` (validate, prompt,
tokenize), ``infer`` (sort, micro-batch, pad, run the backend, restore order) and ``finish``
(Matryoshka truncation, renormalisation). ``embed`` chains the three.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .backends import Backend, create_backend
from .batching import CPU_BATCHING, collate, plan
from .config import BackendConfig, BatchingConfig
from .errors import ArtefactError, BackendError, UnavailableError
from .info import ModelInfo
from .manifest import Manifest, load_manifest
from .pooling import check_dimensions, finish, l2_normalize
from .tokenizer import Encoded, TextTokenizer, TokenIdFormat, validate_texts

log = logging.getLogger(__name__)


def _open_backend(path: Path, manifest: Manifest, backend: str, config: BackendConfig) -> Backend:
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


class Embedder:
    """Embeds texts with one artefact on one backend. Thread-safe; a context manager."""

    def __init__(self, path: Path, manifest: Manifest, backend: Backend, batching: BatchingConfig) -> None:
        self.path = path
        self.manifest = manifest
        self.batching = batching
        self._backend: Backend | None = backend
        self._tokenizer = TextTokenizer(path, manifest)
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
    def load(cls, path: str | Path, backend: str = "auto", *, precision: str = "auto",
             batching: BatchingConfig | None = None, backend_config: BackendConfig | None = None) -> Embedder:
        """Open an artefact directory written by ``embedrt export``."""
        root = Path(path)
        manifest = load_manifest(root)
        if manifest.task != "embed":
            raise ArtefactError(f"{root} is a {manifest.task} model, not an embedding model: load it with "
                                f"embedrt.Reranker.load({str(root)!r})")
        config = backend_config or BackendConfig()
        if precision != "auto":
            config = replace(config, precision=precision)
        opened = _open_backend(root, manifest, backend, config)
        if batching is None:  # the defaults differ by device; see batching.CPU_BATCHING
            batching = CPU_BATCHING if opened.device == "cpu" else BatchingConfig()
        try:
            return cls(root, manifest, opened, batching)
        except BaseException:
            opened.close()
            raise

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
        hidden = self.manifest.hidden_size
        vectors = np.empty((len(items), hidden), dtype=np.float32)
        norms = np.empty((len(items),), dtype=np.float32)
        if not items:
            return vectors, norms
        micros = list(plan([e.length for e in items], self.batching, self._limits))
        # Collated lazily: a GPU backend pipelines, collating the next batch while one runs.
        batches = (collate([items[i].ids for i in micro.indices], micro.sequence, self.manifest.pad_token_id,
                           self.manifest.padding_side) for micro in micros)
        with self._in_flight() as backend, closing(backend.run_many(batches)) as outputs:  # closing: a
            for micro, out in zip(micros, outputs, strict=True):  # failure here still frees what is in flight
                rows = list(micro.indices)
                vectors[rows] = out["sentence_embedding"]
                norms[rows] = out["embedding_norm"]
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

    def info(self) -> ModelInfo:
        """The model and how it runs (a closed Embedder reports its backend as it last ran)."""
        low, high = self.manifest.dimensions_range
        backend = self._backend
        if backend is not None:
            self._backend_info = backend.describe()
        m = self.manifest
        return ModelInfo(name=m.name, architecture=m.architecture, dimensions=high, dimensions_range=(low, high),
                         max_length=m.max_length, pooling=m.pooling, normalize=m.normalize,
                         query_template=m.prompts.query, default_instruction=m.prompts.default_instruction,
                         backend=self._backend_info, max_batch_tokens=self.batching.max_batch_tokens,
                         max_batch_size=self.batching.max_batch_size)

    # -- lifecycle -------------------------------------------------------------------------------

    @contextmanager
    def _in_flight(self) -> Iterator[Backend]:
        with self._state:
            if self._backend is None:
                raise UnavailableError("this Embedder is closed; load the artefact again")
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

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Embedder({self.manifest.name!r}, backend={self.backend_name!r}, precision={self.precision!r})"


__all__ = ["Embedder"]
