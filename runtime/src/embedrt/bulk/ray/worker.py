"""What runs inside Ray's actors: one ``Embedder`` each, loaded once, from a path every node can see.

``ShardWriter`` is the ``--ray`` job's actor: it is handed one shard's ids and texts, embeds them
window by window exactly as the job does in one process (``embed_blocks``, windows from the shard's
first row), and writes the shard into the output directory atomically; the driver records it.
``EmbedBatches`` is the class-based UDF of ``embed_dataset`` (Ray Data's ``map_batches``): a batch of
rows in, ``id`` and ``embedding`` out.

Neither imports Ray: Ray wraps them (``ray.remote``, ``map_batches``) where a job asks for it. A
worker that cannot load the model says so with its host's name through ``describe`` instead of
dying in its constructor, which Ray would report as a dead actor.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import BackendConfig
from ...embedder import Embedder
from ...errors import InvalidInputError, InvalidTextError
from ...streaming import WINDOW, embed_blocks
from ..shardbook import describe
from ..shards import embedding_array, write_shard


@dataclass(frozen=True)
class WorkerSpec:
    """How every actor loads and runs the model (pickled once per actor)."""

    artefact: str  # a path every node of the cluster can read
    backend: str = "auto"
    precision: str = "auto"
    attention: str = "auto"
    threads: int = 0  # ONNX Runtime's intra-op threads; 0: its own choice
    prompt: str | None = "document"  # as ``embed_blocks`` takes it
    instruction: str | None = None
    dimensions: int | None = None
    window: int = WINDOW

    def load(self) -> Embedder:
        config = BackendConfig(attention=self.attention, intra_op_threads=self.threads)
        return Embedder.load(self.artefact, self.backend, precision=self.precision, backend_config=config)

    def embed(self, embedder: Embedder, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors ``[n, d]`` in order and the tokens run, window by window as the local job embeds a shard."""
        blocks = list(embed_blocks(embedder, texts, prompt=self.prompt, instruction=self.instruction,
                                   dimensions=self.dimensions, window=self.window))
        if not blocks:
            return np.empty((0, self.dimensions or embedder.info().dimensions), dtype=np.float32), 0
        return np.concatenate([b.vectors for b in blocks]), sum(b.tokens for b in blocks)


class ShardWriter:
    """One model; each call embeds one shard's texts and writes it into ``output`` (shared by every node)."""

    def __init__(self, spec: WorkerSpec, output: str) -> None:
        self.spec, self.output, self.host = spec, Path(output), socket.gethostname()
        self.embedder: Embedder | None = None
        self.problem: str | None = None
        try:
            self.embedder = spec.load()
        except Exception as exc:  # reported by describe(), with where it happened
            self.problem = f"{type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        """``{"model": ...}`` as the run record keeps it, or ``{"error": ...}`` if the model did not load here."""
        if self.embedder is None:
            return {"error": f"on {self.host}: {self.problem}"}
        return {"model": describe(self.embedder, self.spec.dimensions)}

    def write(self, name: str, ids: list[Any], id_type: str, texts: list[str]) -> dict[str, Any]:
        """Embed and write shard ``name``; its ``bytes``, ``sha256``, ``tokens`` and ``rows``."""
        if self.embedder is None:
            raise InvalidInputError(f"on {self.host}: {self.problem}")
        if not self.output.is_dir():
            raise InvalidInputError(f"--output {self.output} does not exist on {self.host}: on a Ray cluster it must "
                                    "be a path every node can write (a shared file system)")
        vectors, tokens = self.spec.embed(self.embedder, texts)
        written = write_shard(self.output / name, ids, id_type, vectors)
        return {**written, "tokens": tokens, "rows": len(vectors)}


class EmbedBatches:
    """``map_batches`` UDF: a pyarrow batch with ``text_column`` and ``id_column`` in, ``id`` and ``embedding`` out."""

    def __init__(self, spec: WorkerSpec, text_column: str, id_column: str) -> None:
        self.spec, self.text_column, self.id_column = spec, text_column, id_column
        self.embedder = spec.load()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa  # Ray Data brings it; imported in the worker, where batches are

        for name in (self.text_column, self.id_column):
            if name not in batch.column_names:
                raise InvalidInputError(f'the dataset has no column "{name}"; its columns are '
                                        f"{', '.join(batch.column_names[:20])}")
        ids = batch.column(self.id_column)
        texts = batch.column(self.text_column).to_pylist()
        try:
            vectors, _ = self.spec.embed(self.embedder, texts)
        except InvalidTextError as exc:  # name the row by its id, not by its place in this batch
            raise InvalidInputError(f'the row with id {ids[exc.index].as_py()!r} has a "{self.text_column}" that '
                                    f"{exc.detail}") from None
        return pa.table({"id": ids, "embedding": embedding_array(vectors)})


__all__ = ["EmbedBatches", "ShardWriter", "WorkerSpec"]
