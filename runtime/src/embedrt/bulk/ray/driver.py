"""``embedrt embed ... --output DIR/ --ray``: the corpus job of ``job.py``, its shards embedded and written
by Ray actors (``ShardWriter``) through the pool and loop of ``parallel.py``.

Faults: actors run with ``max_restarts=-1`` and ``max_task_retries=-1``, so an actor whose process or
node dies is started again (it loads the model again) and given the shards it held again; a shard
written twice is the same file, renamed into place atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from ...errors import EmbedrtError
from ...remote import absolute
from ..job import BulkOptions, begin
from ..parallel import ParallelJob, ShardPool, agreed_model
from ..shardbook import ShardBook
from ..worker import ShardWriter, WorkerSpec
from .cluster import RayJobError, connected, import_ray, plan_actors


def run_on_ray(options: BulkOptions, book: ShardBook, say: Callable[[str], None]) -> None:
    """Run the job whose preparation ``job.run`` has done (``book``) on Ray, as ``options.ray`` says."""
    assert options.ray is not None
    ray = import_ray()
    with connected(ray, options.ray.address):
        plan = plan_actors(ray, options.ray)
        spec = WorkerSpec(absolute(options.artefact), options.backend, options.precision, options.attention,
                          plan.threads, options.prompt, options.instruction, options.dimensions, options.window)
        remote = ray.remote(ShardWriter).options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=-1,
                                                 max_task_retries=-1)
        actors = [remote.remote(spec, str(book.output.path.resolve())) for _ in range(plan.count)]
        try:
            begin(options, book, _model(ray, actors))
            say(f"embedding on Ray: {plan}")
            ParallelJob(_Pool(ray, actors), options, book).run()
        finally:
            for actor in actors:
                ray.kill(actor)


def _model(ray: ModuleType, actors: list[Any]) -> dict[str, Any]:
    """How the actors run the model (once every one has loaded it); refused where one could not."""
    return agreed_model(ray.get([actor.describe.remote() for actor in actors]), "a Ray worker",
                        "; the artefact must be a path every node of the cluster can read (a shared file system), "
                        "or a URL each can fetch (s3://, gs://, ...)",
                        "--backend and --precision, or --gpus-per-actor,", RayJobError)


class _Pool(ShardPool):
    """Shards as calls of the actors' ``write``; Ray's retries hand a restarted actor its shards again."""

    unseen_hint = "on a Ray cluster --output must be a path every node can write (a shared file system)"

    def __init__(self, ray: ModuleType, actors: list[Any]) -> None:
        super().__init__(len(actors))
        self.ray, self.actors = ray, actors

    def send(self, worker: int, name: str, ids: list[Any], id_type: str, texts: list[str]) -> Any:
        return self.actors[worker].write.remote(name, ids, id_type, texts)

    def ready(self, handles: list[Any]) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1)
        return list(done)

    def result(self, handle: Any) -> dict[str, Any]:
        exceptions = self.ray.exceptions
        try:
            return dict(self.ray.get(handle))
        except exceptions.RayTaskError as exc:
            if isinstance(exc.cause, EmbedrtError):
                raise exc.cause from None
            raise RayJobError(f"a Ray worker failed: {exc.cause!r}") from exc
        except exceptions.RayError as exc:  # an actor that cannot be started again, a lost object
            raise RayJobError(f"Ray could not finish a shard: {exc}") from exc


__all__ = ["run_on_ray"]
