"""Ray Serve replicas: how to merge concurrent requests inside a replica, measured.

    python scripts/bench_ray_serve.py [--artefact DIR] [--replicas 2] [--clients 32] [--requests 1500]
                                      [--words 5-20] [--no-docs]

One local Ray instance (this machine's CPUs), the application of ``embedrt.server.ray_serve``
with --replicas CPU replicas of the model, and --clients keep-alive HTTP clients (bench_server's),
each sending one text per request to POST /v1/embeddings. Variants, one fresh application each:

  core         the shipped replica: embedrt's core (TaskScheduler) merges the requests Serve hands it
  serve.batch  Serve's @serve.batch merges them instead (tokenized first, as the core does; same
               batch size and wait), the alternative issue #16 asked to measure
  no merging   the core with --max-batch-requests 1: every request its own backend call
  gateway      the core, behind the gateway an application of several models has (one hop more)

plus, for reference, plain ``embedrt serve`` (one process, no Ray) on the same machine; and the
shipped replicas again over gRPC (Serve's gRPC proxy, ``--grpc-port``), next to plain ``embedrt
serve`` over gRPC, with as many gRPC clients (``Embed``, one text per call; ``--no-grpc`` leaves them out).
Writes the "ray-serve" section of docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from bench_server import Load, Server, _run_grpc, _run_http, ensure_artefact, free_port, make_texts, word_range
from benchdocs import cpu_name, markers, write_section
from ray import serve

from embedrt.config import BackendConfig, RayServeConfig, SchedulerConfig, ServerConfig
from embedrt.errors import EmbedrtError
from embedrt.heads import Prepared
from embedrt.server import ray_serve
from embedrt.server.ray_grpc import grpc_options
from embedrt.server.ray_serve import Gateway, ModelIngress, ModelOptions, ModelReplica, Refused, replica_options

ROOT = Path(__file__).resolve().parent.parent
BATCH_WAIT_S = SchedulerConfig().max_wait_us / 1e6
PORT = free_port()
GRPC_PORT = free_port()


@dataclass(frozen=True)
class _Batched:
    """The model as the replica's HTTP app sees it, its requests sent through ``ServeBatchReplica.merged``."""

    name: str
    task: str
    replica: ServeBatchReplica

    def info(self) -> Any:
        return self.replica.served.info()

    async def run(self, request: Any) -> Any:
        head = self.replica.served.scheduler.head
        head.check(request, self.replica.options.scheduler.max_inputs_per_request)
        prepared = await asyncio.to_thread(head.prepare, request)
        outcome = await self.replica.merged((request, prepared))
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome


class ServeBatchReplica(ModelIngress):
    """The replica with Serve's @serve.batch in place of the core's batching."""

    async def __serve_build_asgi_app__(self) -> Any:
        app = await super().__serve_build_asgi_app__()
        self.state.models = {self.served.name: _Batched(self.served.name, self.served.task, self)}
        return app

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=BATCH_WAIT_S)
    async def merged(self, jobs: list[tuple[Any, Prepared]]) -> list[Any]:
        head = self.served.scheduler.head
        items = [item for _, prepared in jobs for item in prepared.items]
        outputs = await asyncio.to_thread(head.infer, items)
        results, offset = [], 0
        for request, prepared in jobs:
            rows = slice(offset, offset + len(prepared.items))
            offset = rows.stop
            try:
                results.append(head.finish(request, prepared, tuple(out[rows] for out in outputs), 0.0))
            except EmbedrtError as exc:
                results.append(Refused(exc))
        return results


class RayApp:
    """The Serve application on PORT, deleted on exit (``http_port`` for bench_server's client)."""

    def __init__(self, artefact: Path, replicas: int, replica: type[ModelIngress], options: ModelOptions,
                 gateway: bool = False) -> None:
        self.artefact, self.replicas, self.replica, self.options = artefact, replicas, replica, options
        self.gateway = gateway
        self.http_port, self.grpc_port = PORT, GRPC_PORT

    def __enter__(self) -> RayApp:
        config = RayServeConfig(replicas=self.replicas)
        if self.gateway:  # what an application of several models gets: one hop more per request
            model = serve.deployment()(ModelReplica).options(name="model", **replica_options(config, self.options))
            options = dataclasses.replace(self.options, backend_config=BackendConfig(intra_op_threads=config.threads))
            app = serve.deployment()(Gateway).options(
                name="gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
                logging_config={"enable_access_log": False}).bind([model.bind(str(self.artefact), options,
                                                                               ServerConfig())], ServerConfig())
        else:
            ray_serve.ModelIngress = self.replica  # type: ignore[misc]  # build_app deploys this class
            try:
                app = ray_serve.build_app([self.artefact], config, self.options)
            finally:
                ray_serve.ModelIngress = ModelIngress  # type: ignore[misc]
        serve.run(app, name="bench", route_prefix="/")
        return self

    def __exit__(self, *exc: object) -> None:
        serve.delete("bench")


def measure(target: Any, texts: list[str], clients: int, rounds: int, grpc: bool = False) -> list[float]:
    """Requests per second of each round (after a warm-up round inside _run_http / _run_grpc)."""
    run = _run_grpc if grpc else _run_http
    return [len(texts) / asyncio.run(run(target, texts, clients))[0] for _ in range(rounds)]


def render(rows: list[tuple[str, list[float]]], args: argparse.Namespace, load: tuple[float, float]) -> str:
    begin, end = markers("ray-serve")
    lines = [begin, "## Ray Serve replicas (`scripts/bench_ray_serve.py`)", "",
             f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}; "
             f"the tiny random Qwen3 of the tests; {args.clients} concurrent clients (HTTP, or gRPC where the "
             "row says), one text of "
             f"{args.words} words per request, {args.requests} requests a round, {args.rounds} rounds; clients, "
             "Ray, Serve's proxy and the replicas on the same machine; load average (1 min) "
             f"{load[0]:.1f} before, {load[1]:.1f} after (other jobs may share the machine).", "",
             "| replica merging | replicas | requests/s (median of rounds) | rounds |", "| --- | ---: | ---: | --- |"]
    for name, rates in rows:
        replicas = "1 process" if name.startswith("embedrt serve") else str(args.replicas)
        lines.append(f"| {name} | {replicas} | {statistics.median(rates):.0f} | "
                     f"{', '.join(f'{r:.0f}' for r in rates)} |")
    return "\n".join([*lines, end, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words", default="5-20")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--no-grpc", dest="grpc", action="store_false", help="leave out the gRPC rows")
    args = parser.parse_args()
    artefact = ensure_artefact(args.artefact).resolve()
    texts = make_texts(args.requests, word_range(args.words))
    rows: list[tuple[str, list[float]]] = []
    load_before = os.getloadavg()[0]
    with Server(artefact, [], Load(backend="onnxruntime", precision="fp32")) as single:
        rows.append(("embedrt serve (no Ray, reference)", measure(single, texts, args.clients, args.rounds)))
        if args.grpc:
            rows.append(("embedrt serve over gRPC (no Ray, reference)",
                         measure(single, texts, args.clients, args.rounds, grpc=True)))
    source = str(ROOT / "runtime" / "src")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                    grpc_options=grpc_options(GRPC_PORT) if args.grpc else None)
        base = ModelOptions(backend="onnxruntime", precision="fp32")
        single = ModelOptions(backend="onnxruntime", precision="fp32",
                              scheduler=SchedulerConfig(max_batch_requests=1))
        variants = [("core (shipped)", ModelIngress, base, False),
                    ("@serve.batch", ServeBatchReplica, base, False),
                    ("no merging (core, --max-batch-requests 1)", ModelIngress, single, False),
                    ("core, behind the gateway (several models)", ModelIngress, base, True)]
        for name, replica, options, gateway in variants:
            with RayApp(artefact, args.replicas, replica, options, gateway) as app:
                rows.append((name, measure(app, texts, args.clients, args.rounds)))
                print(f"{name}: {rows[-1][1]}", file=sys.stderr)
                if args.grpc and replica is ModelIngress and options is base:
                    rows.append((f"{name}, over gRPC", measure(app, texts, args.clients, args.rounds, grpc=True)))
                    print(f"{rows[-1][0]}: {rows[-1][1]}", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()
    section = render(rows, args, (load_before, os.getloadavg()[0]))
    print(section)
    if not args.no_docs:
        write_section("ray-serve", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
