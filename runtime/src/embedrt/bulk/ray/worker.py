"""What runs inside Ray's actors: one ``Embedder`` each, loaded once, from a path every node sees or a URL.

``ShardWriter`` (``bulk/worker.py``) is the ``--ray`` job's actor: it is handed one shard's ids and
texts, embeds them and writes the shard into the output directory; the driver records it. A writer
that cannot load the model says so through ``describe`` instead of dying in its constructor, which
Ray would report as a dead actor. ``EmbedBatches`` is the class-based UDF of ``embed_dataset`` (Ray
Data's ``map_batches``): a batch of rows in, ``id`` and ``embedding`` out.

Neither imports Ray: Ray wraps them (``ray.remote``, ``map_batches``) where a job asks for it.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidInputError, InvalidTextError
from ..shards import embedding_array
from ..worker import ShardWriter, WorkerSpec


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
