"""Helpers for the server tests: a real server on port 0 around the real models, real clients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np

from embedrt import Embedder, Reranker, load_manifest
from embedrt.config import SchedulerConfig, ServerConfig
from embedrt.server import ThreadedServer, pb2, pb2_grpc
from embedrt.tokenizer import Encoded

EPHEMERAL = ServerConfig(grpc_port=0, http_port=0, grace_s=5.0)
MAX_INPUTS = 8  # texts per embedding request and documents per rerank request, on the shared servers
MAX_MESSAGE_BYTES = 1 << 18  # the servers with rerankers: a body limit that a test can pass cheaply
M = TypeVar("M", Embedder, Reranker)


def open_model(artefact: Path) -> Embedder | Reranker:
    """The artefact as its manifest's task says, on ONNX Runtime FP32 as the server tests compare it."""
    kind = Reranker if load_manifest(artefact).task == "rerank" else Embedder
    return kind.load(artefact, "onnxruntime", precision="fp32")


class Hooks:
    """Wraps a loaded Embedder's ``infer``: hold batches at a gate, fail the next one, count calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.loaded = threading.Event()  # loading waits for this when `hold_loading` is used
        self.loaded.set()

    def wrap(self, model: M) -> M:
        real = model.infer

        def infer(items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
            self.entered.set()
            self.gate.wait(30)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected backend failure")
            return real(items)

        model.infer = infer  # type: ignore[method-assign]
        return model


class Served:
    """A running ThreadedServer plus clients for both transports."""

    def __init__(self, server: ThreadedServer, hooks: Hooks) -> None:
        self.server, self.hooks = server, hooks
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}")
        self.stub = pb2_grpc.EmbedderStub(self.channel)
        self.rerank_stub = pb2_grpc.RerankerStub(self.channel)
        http = server.ports.http
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{http}" if http else "http://http-is-off", timeout=30)

    def embed(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        reply = self.stub.Embed(pb2.EmbedRequest(inputs=list(texts), **options), timeout=30)
        return np.array([e.values for e in reply.embeddings], dtype=np.float32)

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from GET /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.http.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def close(self) -> None:
        self.channel.close()
        self.http.close()
        self.server.stop(grace=5.0)


def serve(artefact: Path | Sequence[Path], config: ServerConfig = EPHEMERAL, scheduler: SchedulerConfig | None = None,
          hooks: Hooks | None = None, wait: bool = True) -> Served:
    """One artefact as before (an Embedder, the backend chosen as `embedrt serve` would), or several,
    each loaded as its task says."""
    hooks = hooks or Hooks()
    if isinstance(artefact, Path):
        def load() -> Embedder:
            hooks.loaded.wait(30)
            return hooks.wrap(Embedder.load(artefact))

        server = ThreadedServer(load, config, scheduler)
    else:
        def loader(path: Path) -> Callable[[], Embedder | Reranker]:
            return lambda: hooks.wrap(open_model(path))

        server = ThreadedServer([loader(p) for p in artefact], config, scheduler)
    server.start()
    if wait:
        server.wait_ready()
    return Served(server, hooks)
