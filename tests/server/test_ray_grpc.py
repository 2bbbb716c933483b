"""gRPC on Ray Serve (``embedrt serve --ray --grpc-port``, ``embedrt.server.ray_grpc``): Serve's gRPC proxy
in front of the replicas answers as ``embedrt serve``'s gRPC does: the same vectors, codes and messages.

One local Ray of 2 CPUs for the module (loopback clients; Serve's gRPC proxy itself binds every
interface, it has no host option), shut down at its end even on failure. Two applications side by
side, so every call names its application in the ``application`` metadata as a client of a shared
cluster must: one model whose two replicas are the ingress, and an embedder plus a reranker behind
the gateway. Selected with ``-m ray``; skipped without Ray.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _serving import MAX_INPUTS, MAX_MESSAGE_BYTES, Served
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import embedrt
from embedrt import Embedder, Reranker, load_manifest
from embedrt.cli import build_parser
from embedrt.cli.serve import OPTIONS, settings_from
from embedrt.config import RayServeConfig, SchedulerConfig, ServerConfig
from embedrt.errors import EmbedrtError
from embedrt.server import RERANKER_SERVICE_NAME, SERVICE_NAME, pb2, pb2_grpc

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install 'embedrt[ray]'")
import ray
from ray import serve

from embedrt.server.ray_grpc import grpc_options
from embedrt.server.ray_run import check_grpc
from embedrt.server.ray_serve import ModelOptions, app_builder, build_app

pytestmark = pytest.mark.ray

SOURCES = str(Path(embedrt.__file__).resolve().parents[1])  # this checkout's runtime/src, for every worker
ONE, SEVERAL = "embedrt-grpc-one", "embedrt-grpc-several"
LIMITS = ServerConfig(max_message_bytes=MAX_MESSAGE_BYTES)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café — 東京タワー 🚀", "x", "word " * 300]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vectors(reply: Any) -> np.ndarray:
    return np.array([e.values for e in reply.embeddings], dtype=np.float32)


class OnRay:
    """Stubs on Serve's gRPC proxy, every call naming ``app`` in its metadata."""

    def __init__(self, channel: grpc.Channel, app: str) -> None:
        self.channel, self.metadata = channel, (("application", app),)
        self.stub, self.rerank_stub = pb2_grpc.EmbedderStub(channel), pb2_grpc.RerankerStub(channel)

    def call(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=30)

    def stream(self, requests: list[Any]) -> Any:
        return self.stub.EmbedStream(iter(requests), metadata=self.metadata, timeout=30)

    def raw_embed(self, data: bytes) -> Any:
        call = self.channel.unary_unary(f"/{SERVICE_NAME}/Embed", request_serializer=None,
                                        response_deserializer=pb2.EmbedResponse.FromString)
        return call(data, metadata=self.metadata, timeout=30)


def _status(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """The status a call fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# -- the module's Ray: Serve's HTTP and gRPC proxies; two applications --------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A local Ray of 2 CPUs, Serve's gRPC proxy (our services) on a free port; everything stopped at the end."""
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": SOURCES}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()}, grpc_options=grpc_options(port))
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def channel(cluster: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{cluster}") as opened:
        yield opened


@pytest.fixture(scope="module")
def one(cluster: int, channel: grpc.Channel, artefact: Path) -> Iterator[OnRay]:
    """The tiny model in two replicas of half a CPU each, the ingress; limits as the in-process ``served``'s."""
    options = ModelOptions(scheduler=SchedulerConfig(max_inputs_per_request=MAX_INPUTS))
    serve.run(build_app([artefact], RayServeConfig(replicas=2, cpus_per_replica=0.5), options, LIMITS),
              name=ONE, route_prefix="/one")
    yield OnRay(channel, ONE)
    serve.delete(ONE)


@pytest.fixture(scope="module")
def several(cluster: int, channel: grpc.Channel, artefact: Path, reranker_artefact: Path) -> Iterator[OnRay]:
    """An embedder and a reranker, one replica each, behind the gateway (as the in-process ``mixed``)."""
    args = {"artefact": [str(artefact), str(reranker_artefact)], "replicas": 1, "cpus_per_replica": 0.25,
            "max-inputs": MAX_INPUTS, "max-message-bytes": MAX_MESSAGE_BYTES}
    serve.run(app_builder(args), name=SEVERAL, route_prefix="/several")
    yield OnRay(channel, SEVERAL)
    serve.delete(SEVERAL)


@pytest.fixture(scope="module")
def name(artefact: Path) -> str:
    return load_manifest(artefact).name


# -- one model: the replicas are the ingress ----------------------------------------------------------------


def test_embed_equals_the_library(one: OnRay, served: Served, library: Embedder) -> None:
    reply = one.call(one.stub.Embed, pb2.EmbedRequest(inputs=TEXTS))
    np.testing.assert_allclose(_vectors(reply), library.embed(TEXTS), atol=1e-6)
    alone = served.stub.Embed(pb2.EmbedRequest(inputs=TEXTS), timeout=30)
    assert reply.model == alone.model == library.manifest.name and reply.usage == alone.usage
    task = "Given a question, find the answer"
    for options, want in (({"dimensions": 32}, library.embed(TEXTS[:2], dimensions=32)),
                          ({"query": True}, library.embed_queries(TEXTS[:2])),
                          ({"instruction": task}, library.embed(TEXTS[:2], instruction=task)),
                          ({"normalize": False}, library.embed(TEXTS[:2], normalize=False))):
        got = _vectors(one.call(one.stub.Embed, pb2.EmbedRequest(inputs=TEXTS[:2], **options)))
        np.testing.assert_allclose(got, want, atol=1e-5 if "normalize" in options else 1e-6, err_msg=str(options))


def test_info_is_embedrt_serves(one: OnRay, served: Served) -> None:
    info = one.call(one.stub.Info, pb2.InfoRequest())
    assert info == served.stub.Info(pb2.InfoRequest(), timeout=10)
    assert info.task == "embed" and info.backend == "onnxruntime" and info.version


BAD = [  # each refused with embedrt serve's code and message (the shared in-process server allows 8 inputs)
    pb2.EmbedRequest(),
    pb2.EmbedRequest(inputs=["a"] * (MAX_INPUTS + 1)),
    pb2.EmbedRequest(inputs=["a"], dimensions=8),
    pb2.EmbedRequest(inputs=["a"], dimensions=65),
    pb2.EmbedRequest(inputs=["short", "word " * 300], truncate=False),
]


def test_errors_are_embedrt_serves(one: OnRay, served: Served, library: Embedder) -> None:
    for request in BAD:
        on_ray = _status(one.call, one.stub.Embed, request)
        assert on_ray == _status(served.stub.Embed, request, timeout=10), request
        assert on_ray[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(one.call, one.stub.Embed, BAD[0]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "invalid `inputs`: it is empty; send at least one text")
    # Bad UTF-8 is parsed by our parser on Serve's proxy: INVALID_ARGUMENT, not gRPC's INTERNAL.
    raw = pb2.EmbedRequest(inputs=["ab"]).SerializeToString().replace(b"ab", b"\xff\xfe")
    on_ray = _status(one.raw_embed, raw)
    assert on_ray[0] == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in on_ray[1]
    assert on_ray == _status(OnRay(served.channel, "").raw_embed, raw)
    # A reranking call to an embedder is told where embeddings go, as by a one-embedder server.
    rerank = pb2.RerankRequest(query="q", documents=["d"])
    assert _status(one.call, one.rerank_stub.Rerank, rerank) == _status(served.rerank_stub.Rerank, rerank, timeout=10)
    # A bad request fails alone.
    good = one.call(one.stub.Embed, pb2.EmbedRequest(inputs=["still", "serving"]))
    np.testing.assert_allclose(_vectors(good), library.embed(["still", "serving"]), atol=1e-6)


def test_the_message_limit_holds(one: OnRay, mixed: Served) -> None:
    """Serve's proxy takes messages up to 2 GiB; the replica refuses one over --max-message-bytes with the code
    gRPC's own limit gives in embedrt serve."""
    big = pb2.EmbedRequest(inputs=["x" * MAX_MESSAGE_BYTES])
    code, details = _status(one.call, one.stub.Embed, big)
    assert code == _status(mixed.stub.Embed, big, timeout=10)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {MAX_MESSAGE_BYTES}" in details and "--max-message-bytes" in details


def test_stream_answers_in_request_order(one: OnRay, served: Served, library: Embedder) -> None:
    requests = [pb2.EmbedRequest(inputs=[TEXTS[i % len(TEXTS)]] * (1 + i % 3)) for i in range(12)]
    replies = list(one.stream(requests))
    assert len(replies) == len(requests)
    for request, reply in zip(requests, replies, strict=True):
        np.testing.assert_allclose(_vectors(reply), library.embed(list(request.inputs)), atol=1e-6)
    # A failing request ends its stream with embedrt serve's status, after the replies before it.
    failing = [pb2.EmbedRequest(inputs=["fine"]), pb2.EmbedRequest()]
    on_ray, alone = one.stream(failing), served.stub.EmbedStream(iter(failing), timeout=10)
    assert len(next(on_ray).embeddings) == len(next(alone).embeddings) == 1
    assert _status(next, on_ray) == _status(next, alone)


def test_reflection_lists_the_services(one: OnRay) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(one.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    assert {SERVICE_NAME, RERANKER_SERVICE_NAME} <= {s.name for s in reply.list_services_response.service}


def test_several_applications_need_the_application_metadata(one: OnRay, several: OnRay) -> None:
    stub = pb2_grpc.EmbedderStub(one.channel)
    code, details = _status(stub.Embed, pb2.EmbedRequest(inputs=["a"]))
    assert code == grpc.StatusCode.NOT_FOUND and "Application metadata not set" in details


# -- several models: the gateway routes by `model` ----------------------------------------------------------


def test_the_gateway_routes_by_model(several: OnRay, mixed: Served, library: Embedder, reranker: Reranker,
                                     name: str) -> None:
    texts = ["behind the gateway", "over gRPC"]
    embedded = several.call(several.stub.Embed, pb2.EmbedRequest(inputs=texts, model=name))
    assert embedded.model == name
    np.testing.assert_allclose(_vectors(embedded), library.embed(texts), atol=1e-6)
    documents = ["Paris is the capital of France.", "Berlin is in Germany.", "Bananas are yellow."]
    request = pb2.RerankRequest(query="capital of France?", documents=documents, return_documents=True)
    ranked = several.call(several.rerank_stub.Rerank, request)
    want = reranker.rerank("capital of France?", documents)
    assert [r.index for r in ranked.results] == [r.index for r in want]
    assert [r.document for r in ranked.results] == [documents[r.index] for r in want]
    np.testing.assert_allclose([r.relevance_score for r in ranked.results], [r.score for r in want], atol=1e-6)
    ranker = reranker.manifest.name
    assert several.call(several.stub.Info, pb2.InfoRequest(model=ranker)) == mixed.stub.Info(
        pb2.InfoRequest(model=ranker), timeout=10)
    # A stream through the gateway: each request goes to the model's deployment, replies in order.
    requests = [pb2.EmbedRequest(inputs=[f"stream {i}"], model=name) for i in range(6)]
    for request, reply in zip(requests, several.stream(requests), strict=True):
        np.testing.assert_allclose(_vectors(reply), library.embed(list(request.inputs)), atol=1e-6)


def test_errors_behind_the_gateway_are_embedrt_serves(several: OnRay, mixed: Served, reranker: Reranker,
                                                       name: str) -> None:
    ranker = reranker.manifest.name
    for method, request in (("Embed", pb2.EmbedRequest()),
                            ("Embed", pb2.EmbedRequest(inputs=["x"], model=ranker)),
                            ("Info", pb2.InfoRequest()),
                            ("Rerank", pb2.RerankRequest(query="q", documents=[])),
                            ("Rerank", pb2.RerankRequest(query=" ", documents=["a"])),
                            ("Rerank", pb2.RerankRequest(query="q", documents=["a"], model=name))):
        on_ray = getattr(several.rerank_stub if method == "Rerank" else several.stub, method)
        alone = getattr(mixed.rerank_stub if method == "Rerank" else mixed.stub, method)
        status = _status(several.call, on_ray, request)
        assert status == _status(alone, request, timeout=10), (method, request)
        assert status[0] == grpc.StatusCode.INVALID_ARGUMENT


# -- starting Serve, and the flags ---------------------------------------------------------------------------


def test_a_serve_without_our_grpc_is_refused(cluster: int) -> None:
    check_grpc(cluster)  # the module's Serve: our services on that port
    with pytest.raises(EmbedrtError, match=rf"Serve already runs on this cluster with gRPC on port {cluster} .*"
                                           r"serve shutdown"):
        check_grpc(cluster + 1)


def _settings(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    return settings_from(build_parser().parse_args(["serve", "art", *argv]))


def test_grpc_flags_on_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(["--ray"], monkeypatch).ray.grpc_port is None  # no gRPC unless asked
    asked = _settings(["--ray", "--grpc-port", "9100", "--reflection", "false"], monkeypatch)
    assert asked.ray.grpc_port == 9100 and asked.server.reflection is False
    monkeypatch.setenv("EMBEDRT_GRPC_PORT", "9101")
    assert settings_from(build_parser().parse_args(["serve", "art", "--ray"])).ray.grpc_port == 9101
    assert _settings(["--grpc-port", "9100"], monkeypatch).ray is None  # not on Ray: embedrt serve's own gRPC
    for argv, message in (
            (["--tls-cert", "c.pem", "--tls-key", "k.pem"], r"--tls-cert: Serve's gRPC proxy has no TLS"),
            (["--grpc-port", "0"], r"--grpc-port 0: Serve's gRPC proxy needs a fixed port"),
            (["--reflection", "true"], r"--reflection: --ray serves gRPC only with --grpc-port"),
            (["--http-port", "0", "--grpc-port", "9100"], r"--http-port 0: Serve's HTTP proxy always runs")):
        with pytest.raises(EmbedrtError, match=message):
            _settings(["--ray", *argv], monkeypatch)
