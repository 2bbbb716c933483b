"""Ray itself: imported only here and only when asked for, connected to, and sized.

``import_ray`` turns a missing Ray into an error naming the extra to install; ``connected`` joins the
Ray a caller already started, or starts / connects one and leaves it again at the end; ``plan_actors``
turns the cluster's resources (and the caller's overrides) into how many actors to start and what
each reserves: one GPU each where the cluster has GPUs, otherwise CPU actors whose ONNX Runtime
threads are the CPUs they reserve (a node's CPUs split evenly into actors of at most 8), so that
actors never put more threads than cores on a node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from ...errors import EmbedrtError, InvalidInputError
from ..job import RayOptions
from ..parallel import WorkerError

INSTALL_HINT = "pip install 'embedrt[ray]'"
CPU_THREADS = 8  # a CPU actor's default: ONNX Runtime gains little from more threads on batches this small


class RayJobError(WorkerError):
    """The cluster could not do the work: a worker could not load the artefact or write a shard, or failed."""


def import_ray(what: str = "--ray") -> ModuleType:
    """``ray`` with Ray Data, or an error naming the extra (Ray is never imported unless a job asks for it)."""
    try:
        import ray
        import ray.data  # the data extra: pandas, pyarrow, fsspec
    except ImportError as exc:
        raise EmbedrtError(f"{what} needs Ray Data: {INSTALL_HINT} (missing: {exc.name})") from exc
    return ray


@contextmanager
def connected(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Inside: a Ray to use. One the caller started is used as it is and left running; otherwise ``ray.init``
    (``address`` as it takes it) and, at the end, ``ray.shutdown``, which also stops a Ray it started."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class ActorPlan:
    count: int  # actors
    gpus: float  # Ray's num_gpus per actor (0: a CPU actor)
    cpus: float  # Ray's num_cpus per actor
    threads: int  # ONNX Runtime's intra-op threads in each

    def __str__(self) -> str:
        each = f"{self.gpus:g} GPU, {_n(self.cpus, 'CPU')}" if self.gpus else \
            f"{_n(self.cpus, 'CPU')} ({_n(self.threads, 'thread')})"
        return f"{_n(self.count, 'actor')} of {each} each"


def _n(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'s' if count != 1 else ''}"


def plan_actors(ray: ModuleType, options: RayOptions, spare: int = 0) -> ActorPlan:
    """How many actors, and what each reserves, from the resources the cluster has now. CPU actors leave
    ``spare`` CPUs on each node to other work (Ray Data's reading tasks: a pool that takes every CPU
    starves them, and the job waits forever); the rest is split into actors of at most ``CPU_THREADS``."""
    for name, value, least in (("actors", options.actors, 1), ("GPUs per actor", options.gpus_per_actor, 0),
                               ("CPUs per actor", options.cpus_per_actor, 1)):
        if value is not None and value < least:
            raise InvalidInputError(f"{name} must be at least {least}, not {value}")
    total = ray.cluster_resources()
    gpus_there = float(total.get("GPU", 0.0))
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus_there >= 1 else 0.0)
    if gpus > 0:
        if gpus_there < gpus:
            raise RayJobError(f"the Ray cluster has {gpus_there:g} GPUs, fewer than the {gpus:g} an actor asks for; "
                              "pass --gpus-per-actor 0 for CPU actors")
        cpus = options.cpus_per_actor or 1
        return ActorPlan(options.actors or max(1, int(gpus_there // gpus)), gpus, float(cpus), cpus)
    nodes = [max(1, int(n["Resources"].get("CPU", 0.0)) - spare) for n in ray.nodes()
             if n.get("Alive") and n["Resources"].get("CPU", 0.0) >= 1]
    biggest = max(nodes, default=0)
    cpus = options.cpus_per_actor or max(1, biggest // math.ceil(biggest / CPU_THREADS))  # an even split, <= 8
    if biggest < cpus:
        raise RayJobError(f"no node of the Ray cluster has {cpus} CPUs to spare (the most is {biggest}); pass a "
                          "smaller --cpus-per-actor")
    return ActorPlan(options.actors or max(1, sum(n // cpus for n in nodes)), 0.0, float(cpus), cpus)


__all__ = ["INSTALL_HINT", "ActorPlan", "RayJobError", "connected", "import_ray", "plan_actors"]
