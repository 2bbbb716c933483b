"""Serving throughput and latency: N concurrent clients against a local `embedrt serve`, gRPC and HTTP.

    python scripts/bench_server.py [--artefact DIR] [--backend B] [--precision P] [--device D]
                                   [--clients 64] [--requests 3000] [--section NAME] [--no-docs]

The server runs as its own process (`embedrt serve`), the clients in this one (asyncio: grpc.aio and
a plain keep-alive HTTP/1.1 client), all on 127.0.0.1. Each request carries one text from a fixed,
seeded mix of --words words (default 5-60).
Modes, one fresh server each:
  dynamic      cross-request batching (the defaults)
  batch-of-one --max-batch-requests 1: every request is its own backend call
Mean batch size and backend time come from the server's own /metrics. Per-request overhead is
measured with one sequential client and no batching wait: client-observed latency minus the
backend's time for that request. Without --artefact a tiny random Qwen3 is exported to build/bench/.
--backend / --precision / --device go to both the server and the in-process ceiling run.
Writes the "server" section of docs/benchmarks.md ("server-gpu" when the backend ran on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from benchdocs import markers, write_section  # scripts/ is on sys.path when run as a script
from prometheus_client.parser import text_string_to_metric_families

from embedrt.info import ModelInfo

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("vector search engine model token batch query document retrieval latency throughput server "
         "graph tensor kernel memory cache index cosine shard replica queue request embedding").split()


def make_texts(count: int, words: tuple[int, int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(count)]


def word_range(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def ensure_artefact(path: str | None) -> Path:
    if path:
        return Path(path)
    out = ROOT / "build" / "bench" / "tiny-qwen3"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_artefact.py"), str(out)], check=True)
    return out / "artefact"  # make_test_artefact.py writes OUT/artefact and OUT/reference.json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Load:
    """How the model is loaded, the same for the server and the in-process ceiling run."""

    backend: str = "auto"
    precision: str = "auto"
    device: str = "auto"

    def serve_args(self) -> list[str]:
        return ["--backend", self.backend, "--precision", self.precision, "--device", self.device]


class Server:
    """`embedrt serve` in a subprocess; started on enter, SIGTERM-drained on exit."""

    def __init__(self, artefact: Path, extra: list[str], load: Load) -> None:
        self.http_port = free_port()
        self.command = [sys.executable, "-m", "embedrt.cli", "serve", str(artefact), "--grpc-port", "0",
                        "--http-port", str(self.http_port), "--max-queue", "100000", *load.serve_args(), *extra]

    def __enter__(self) -> Server:
        env = {**os.environ, "EMBEDRT_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True, env=env)
        assert self.process.stderr is not None
        seen: list[str] = []
        for line in self.process.stderr:
            found = re.search(r"gRPC 127\.0\.0\.1:(\d+)", line)
            if found:
                self.grpc_port = int(found.group(1))
                # Keep reading: a server whose stderr pipe fills up blocks on its next log line.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
            seen.append(line.rstrip())
        code = self.process.wait(60)
        tail = "\n".join(f"  | {line}" for line in seen[-40:]) or "  | (nothing on stderr)"
        raise RuntimeError(f"the server did not start (exit {code}): {' '.join(self.command)}\n"
                           f"its stderr ended with:\n{tail}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            print(f"[server] {line.rstrip()}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(60)

    def metrics(self) -> dict[str, float]:
        """Samples by name, with the transport label appended where there is one (`name:grpc`)."""
        text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics").text
        return {s.name + (f":{s.labels['transport']}" if "transport" in s.labels else ""): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if set(s.labels) <= {"transport"}}


@dataclass(frozen=True)
class Result:
    mode: str
    transport: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    batches: float
    texts: float
    backend_seconds: float
    server_seconds: float  # mean request duration as the server measured it

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


Call = Callable[[str], Awaitable[None]]


async def _clients(call: Call, texts: list[str], clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    cursor = iter(range(len(texts)))

    async def client() -> None:
        for i in cursor:  # shared: the clients take the next request until all are sent
            started = time.perf_counter()
            await call(texts[i])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


async def _run_grpc(server: Server, texts: list[str], clients: int) -> tuple[float, list[float]]:
    import grpc

    from embedrt.server import pb2, pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb2_grpc.EmbedderStub(channel)

        async def call(text: str) -> None:
            await stub.Embed(pb2.EmbedRequest(inputs=[text]), timeout=120)

        await _clients(call, texts[:clients], clients)  # connect and warm up
        return await _clients(call, texts, clients)


async def _run_http(server: Server, texts: list[str], clients: int) -> tuple[float, list[float]]:
    # A minimal keep-alive HTTP/1.1 client, one connection per client: httpx's AsyncClient pool tops out
    # near 100 requests/s at 64 connections here and would measure itself rather than the server.
    connections = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(clients)]
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)

    async def call(text: str) -> None:
        reader, writer = await idle.get()
        body = json.dumps({"input": text, "model": "bench"}).encode()
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        idle.put_nowait((reader, writer))

    try:
        await _clients(call, texts[:clients], clients)
        return await _clients(call, texts, clients)
    finally:
        for _, writer in connections:
            writer.close()


def measure(server: Server, mode: str, transport: str, texts: list[str], clients: int) -> Result:
    runner = _run_grpc if transport == "grpc" else _run_http
    before = server.metrics()
    seconds, latencies = asyncio.run(runner(server, texts, clients))
    after = server.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    # The warm-up round above is inside the metrics window; its share is small and counted alike in each mode.
    return Result(mode, transport, clients, len(texts), seconds, latencies, delta("embedrt_batch_size_count"),
                  delta("embedrt_batch_size_sum"), delta("embedrt_batch_duration_seconds_sum"),
                  delta(f"embedrt_request_duration_seconds_sum:{transport}")
                  / max(1.0, delta(f"embedrt_request_duration_seconds_count:{transport}")))


def backend_ceiling(artefact: Path, texts: list[str], load: Load,
                    rounds: int = 15) -> tuple[float, float, ModelInfo]:
    """The backend alone, in this process: ms for 64 single-text calls, for one call of the same 64,
    and what was loaded (``Embedder.info()``)."""
    from embedrt import BackendConfig, Embedder

    config = BackendConfig(device=load.device)
    with Embedder.load(artefact, load.backend, precision=load.precision, backend_config=config) as embedder:
        info = embedder.info()
        items = embedder.prepare(texts[:64])
        embedder.infer(items)
        singles, batched = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            for item in items:
                embedder.infer([item])
            singles.append(time.perf_counter() - started)
            started = time.perf_counter()
            embedder.infer(items)
            batched.append(time.perf_counter() - started)
    return min(singles) * 1000, min(batched) * 1000, info


def describe_model(info: ModelInfo) -> str:
    """One phrase naming the model and how it ran, from ``Embedder.info()``."""
    backend = info.backend
    extra = f", engine {backend.engine_key}" if backend.engine_key else ""
    return (f"{info.name} ({info.architecture}, {info.dimensions} dims), "
            f"{backend.backend} {backend.precision} on {backend.gpu or backend.device}{extra}")


def on_gpu(info: ModelInfo) -> bool:
    return info.backend.device == "cuda"


def render(results: list[Result], overhead: list[Result], ceiling: tuple[float, float, ModelInfo],
           args: argparse.Namespace, section: str) -> str:
    def find(mode: str, transport: str) -> Result:
        return next(r for r in results if r.mode == mode and r.transport == transport)

    singles, batched, info = ceiling
    begin, end = markers(section)
    gpu = on_gpu(info)
    lines = [begin, "## Server" + (" (GPU)" if gpu else ""), "",
             f"`python scripts/bench_server.py --clients {args.clients} --requests {args.requests} "
             f"--words {args.words[0]}-{args.words[1]}` on "
             f"{platform.machine()} / {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
             f"Python {platform.python_version()}; {describe_model(info)}; "
             f"one text of {args.words[0]}-{args.words[1]} words per request; server and clients share the machine.",
             "",
             "| transport | batching | clients | requests/s | p50 ms | p99 ms | mean batch size | speed-up |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        base = find("batch-of-one", r.transport).throughput
        size = r.texts / r.batches if r.batches else 0.0
        lines.append(f"| {r.transport} | {r.mode} | {r.clients} | {r.throughput:,.0f} | {r.percentile(0.5):.1f} | "
                     f"{r.percentile(0.99):.1f} | {size:.1f} | {r.throughput / base:.1f}× |")
    best = max(r.throughput / find("batch-of-one", r.transport).throughput for r in results if r.mode == "dynamic")
    verdict = "met" if best >= 5 else "not met"
    lines += ["", f"Target (dynamic batching ≥ 5× batch-of-one at {args.clients} clients): **{verdict}** in this "
              f"run (best {best:.1f}×)." + ("" if best >= 5 else
              " The ceiling below shows how much the backend itself gains from batching; the rest is the Python "
              "transports on both ends (server and load generator share the machine's cores).")]
    lines += ["", f"Backend alone on the same texts (in-process `Embedder.infer`, best of 15): 64 single-text calls "
              f"{singles:.1f} ms, one call of 64 {batched:.1f} ms: {singles / batched:.1f}× is the most batching can "
              "give this model when the transport costs nothing.", "",
              "Per-request overhead (one sequential client, `--max-wait-us 0`): latency minus the backend's own "
              "time for the request. *Server* counts what the server measures (parsing, tokenizing, scheduling, "
              "thread hand-offs, serialising); *client* adds the client library and the loopback round trip.", "",
              "| transport | p50 latency ms | backend ms / request | server overhead ms | client-seen overhead ms |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in overhead:
        backend = r.backend_seconds / r.batches * 1000 if r.batches else 0.0
        server = r.server_seconds * 1000
        p50 = statistics.median(r.latencies) * 1000
        lines.append(f"| {r.transport} | {p50:.2f} | {backend:.2f} | {server - backend:.2f} | {p50 - backend:.2f} |")
    lines += ["", end, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact", help="artefact directory (default: export a tiny random Qwen3)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--transports", default="grpc,http")
    parser.add_argument("--sequential", type=int, default=400, help="requests in the overhead run")
    parser.add_argument("--words", type=word_range, default=(5, 60), metavar="MIN-MAX",
                        help="words per request text (default 5-60; short queries: 2-8)")
    parser.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt (as embedrt serve)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | int8 (as embedrt serve)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (as embedrt serve)")
    parser.add_argument("--section", help='docs/benchmarks.md section (default "server", or "server-gpu" on a GPU)')
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    artefact = ensure_artefact(args.artefact)
    load = Load(args.backend, args.precision, args.device)
    texts = make_texts(args.requests, args.words)
    transports = [t for t in args.transports.split(",") if t]
    modes = {"dynamic": [], "batch-of-one": ["--max-batch-requests", "1"]}
    results: list[Result] = []
    for mode, extra in modes.items():
        with Server(artefact, extra, load) as server:
            for transport in transports:
                result = measure(server, mode, transport, texts, args.clients)
                print(f"{transport:5} {mode:13} {result.throughput:8.0f} req/s  p50 {result.percentile(0.5):6.1f} ms"
                      f"  p99 {result.percentile(0.99):6.1f} ms  batches {result.batches:.0f}", file=sys.stderr)
                results.append(result)
    overhead: list[Result] = []
    with Server(artefact, ["--max-wait-us", "0"], load) as server:
        for transport in transports:
            overhead.append(measure(server, "sequential", transport, texts[: args.sequential], 1))
    ceiling = backend_ceiling(artefact, texts, load)
    name = args.section or ("server-gpu" if on_gpu(ceiling[2]) else "server")
    section = render(results, overhead, ceiling, args, name)
    print(section)
    if not args.no_docs:
        write_section(name, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
