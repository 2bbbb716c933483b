"""``embed_dataset``: a Ray Data ``Dataset`` of texts in, a ``Dataset`` of ``id`` and ``embedding`` out.

Built on ``map_batches`` with a class-based UDF (``worker.EmbedBatches``): each actor of Ray Data's
pool holds one ``Embedder``, loaded once from a path every node can read or a URL each fetches.
Actors reserve one GPU each where the cluster has GPUs, else CPUs whose count is also their ONNX
Runtime threads (``cluster.plan_actors``); Ray Data retries the batches of an actor that dies (its actor pools run
with ``max_restarts=-1``, ``max_task_retries=-1``).

Ids: ``id_column``'s values, carried unchanged; without one, each row's 0-based index in the
dataset's order. Ray Data keeps no row numbers, so the dataset is then read once with its order
preserved (``preserve_order``), kept in Ray's object store (which spills to disk), counted, and
zipped with ``ray.data.range``; with an ``id_column`` the whole pipeline streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...manifest import load_manifest
from ...remote import absolute
from ...streaming import WINDOW
from ..job import RayOptions, check_prompt
from .cluster import import_ray, plan_actors
from .worker import EmbedBatches, WorkerSpec

INDEX = "__embedrt_row"  # the row numbers' column, when the dataset has no ids of its own


def embed_dataset(ds: Any, artefact: str | Path, *, text_column: str = "text", id_column: str | None = None,
                  prompt: str = "document", instruction: str | None = None, dimensions: int | None = None,
                  backend: str = "auto", precision: str = "auto", attention: str = "auto", batch_size: int = WINDOW,
                  concurrency: int | None = None, num_gpus: float | None = None,
                  num_cpus: int | None = None) -> Any:
    """``ds`` (a ``ray.data.Dataset`` with a string column ``text_column``) embedded lazily: a ``Dataset`` of
    ``id`` and ``embedding`` (a fixed-size list of float32).

    ``prompt``: "document" (no instruction) or "query" (``instruction``, or the model's default);
    ``dimensions``: Matryoshka. ``batch_size`` texts per call, sorted by length within it.
    ``concurrency`` actors (default: one per GPU of the cluster, else its CPUs over ``num_cpus``),
    ``num_gpus`` each (default: 1 where the cluster has GPUs, else 0), ``num_cpus`` each (default: 1
    with a GPU, else a node's CPUs but one, split evenly into actors of at most 8; also ONNX Runtime's
    threads). Leave CPUs to Ray Data: reading tasks wait for a free one, and a pool that holds every CPU
    waits for them forever. Options are checked against the artefact's manifest here, before anything runs.
    """
    ray = import_ray("embed_dataset")
    path = absolute(artefact)
    check_prompt(load_manifest(path), prompt, instruction, dimensions)
    if not ray.is_initialized():
        ray.init()  # as Ray Data would on first use: the plan below needs the cluster's resources
    options = RayOptions(actors=concurrency, gpus_per_actor=num_gpus, cpus_per_actor=num_cpus)
    plan = plan_actors(ray, options, spare=1)  # a CPU a node for Ray Data's own tasks (reading, numbering)
    spec = WorkerSpec(path, backend, precision, attention, plan.threads, prompt, instruction, dimensions,
                      window=batch_size)
    if id_column is None:
        ds, id_column = _numbered(ray, ds), INDEX
    return ds.map_batches(EmbedBatches, fn_constructor_kwargs={"spec": spec, "text_column": text_column,
                                                               "id_column": id_column},
                          batch_format="pyarrow", batch_size=batch_size, concurrency=plan.count,
                          num_gpus=plan.gpus, num_cpus=plan.cpus)


def _numbered(ray: Any, ds: Any) -> Any:
    """``ds`` with its rows' 0-based indices, in its order, in column ``INDEX``."""
    ordered = ray.data.Dataset.copy(ds, _deep_copy=True)  # its own context: the caller's stays as it is
    ordered.context.execution_options.preserve_order = True  # and so does the zip's, which runs in it
    done = ordered.materialize()
    return done.zip(ray.data.range(done.count()).rename_columns({"id": INDEX}))


__all__ = ["embed_dataset"]
