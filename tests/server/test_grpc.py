"""gRPC transport: parity with the library, streaming order, Info, health, reflection, error codes."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from _serving import Served, serve
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedrt import Embedder
from embedrt.config import SchedulerConfig
from embedrt.server import SERVICE_NAME, pb2

TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café — 東京タワー 🚀", "x",
         "def add(a, b):\n    return a + b", "word " * 300]


def test_embed_equals_the_library(served: Served, library: Embedder) -> None:
    np.testing.assert_allclose(served.embed(TEXTS), library.embed(TEXTS), atol=1e-6)
    np.testing.assert_allclose(served.embed(TEXTS[:2], dimensions=32), library.embed(TEXTS[:2], dimensions=32),
                               atol=1e-6)
    np.testing.assert_allclose(served.embed(TEXTS[:2], normalize=False), library.embed(TEXTS[:2], normalize=False),
                               atol=1e-5)
    task = "Given a question, find the answer"
    np.testing.assert_allclose(served.embed(TEXTS[:2], instruction=task),
                               library.embed(TEXTS[:2], instruction=task), atol=1e-6)
    np.testing.assert_allclose(served.embed(TEXTS[:2], query=True), library.embed_queries(TEXTS[:2]), atol=1e-6)


def test_reply_carries_model_and_usage(served: Served, library: Embedder) -> None:
    reply = served.stub.Embed(pb2.EmbedRequest(inputs=TEXTS[:3]), timeout=30)
    assert reply.model == library.manifest.name
    assert reply.usage.prompt_tokens == sum(e.length for e in library.prepare(TEXTS[:3]))
    assert len(reply.embeddings) == 3


def test_stream_answers_in_request_order(served: Served, library: Embedder) -> None:
    requests = [pb2.EmbedRequest(inputs=[TEXTS[i % len(TEXTS)]] * (1 + i % 3)) for i in range(12)]
    replies = list(served.stub.EmbedStream(iter(requests), timeout=30))
    assert len(replies) == len(requests)
    for request, reply in zip(requests, replies, strict=True):
        got = np.array([e.values for e in reply.embeddings], dtype=np.float32)
        np.testing.assert_allclose(got, library.embed(list(request.inputs)), atol=1e-6)


def test_info_describes_the_model(served: Served, library: Embedder) -> None:
    info = served.stub.Info(pb2.InfoRequest(), timeout=10)
    low, high = library.manifest.dimensions_range
    assert (info.model, info.dimensions, info.min_dimensions, info.max_dimensions) == (
        library.manifest.name, high, low, high)
    assert info.max_length == library.manifest.max_length
    assert (info.pooling, info.backend, info.precision) == ("last_token", "onnxruntime", "fp32")
    assert info.query_template == library.manifest.prompts.query
    assert info.default_instruction == library.manifest.prompts.default_instruction != ""
    assert info.engine_key == library.info().backend.engine_key == ""  # ONNX Runtime: no engine
    assert info.version


def test_health_is_serving_once_ready(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for name in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    by_symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    reply = next(iter(stub.ServerReflectionInfo(iter([by_symbol]), timeout=5)))
    assert reply.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize(("request_", "field"), [
    (pb2.EmbedRequest(), "inputs"),
    (pb2.EmbedRequest(inputs=["a"] * 9), "inputs"),  # the shared server allows 8
    (pb2.EmbedRequest(inputs=["a"], dimensions=8), "dimensions"),
    (pb2.EmbedRequest(inputs=["a"], dimensions=65), "dimensions"),
    (pb2.EmbedRequest(inputs=["short", "word " * 300], truncate=False), "inputs[1]"),
], ids=["empty", "too-many", "dimensions-low", "dimensions-high", "too-long"])
def test_invalid_input_is_invalid_argument_naming_the_field(served: Served, request_: pb2.EmbedRequest,
                                                            field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Embed(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"`{field}`" in info.value.details()


def test_bad_utf8_is_invalid_argument(served: Served) -> None:
    raw = pb2.EmbedRequest(inputs=["ab"]).SerializeToString().replace(b"ab", b"\xff\xfe")
    call = served.channel.unary_unary(f"/{SERVICE_NAME}/Embed", request_serializer=None,
                                      response_deserializer=pb2.EmbedResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(raw, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in info.value.details()


def test_a_failing_request_ends_its_stream_with_its_status(served: Served) -> None:
    requests = [pb2.EmbedRequest(inputs=["fine"]), pb2.EmbedRequest(inputs=[])]
    replies = served.stub.EmbedStream(iter(requests), timeout=10)
    assert len(next(replies).embeddings) == 1
    with pytest.raises(grpc.RpcError) as info:
        next(replies)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("limit", [{"max_queued_requests": 16}, {"max_queued_tokens": 64}],
                         ids=["requests", "tokens"])
def test_many_streams_are_slowed_down_not_failed(artefact: Path, limit: dict[str, int]) -> None:
    """100 streams of 10 requests against room for 16 admitted requests, or for 64 queued tokens (checked
    after tokenizing, so a request already admitted is refused): back-pressure, no RESOURCE_EXHAUSTED."""
    served = serve(artefact, scheduler=SchedulerConfig(**limit))
    try:
        rejected_before = served.metric("embedrt_errors_total", transport="grpc", code="RESOURCE_EXHAUSTED")
        results: dict[int, list[int] | BaseException] = {}

        def stream(n: int) -> None:
            requests = [pb2.EmbedRequest(inputs=[f"stream {n} request {i}"]) for i in range(10)]
            try:
                results[n] = [len(r.embeddings) for r in served.stub.EmbedStream(iter(requests), timeout=60)]
            except grpc.RpcError as exc:
                results[n] = exc

        threads = [threading.Thread(target=stream, args=(n,)) for n in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
        assert not failed, f"{len(failed)} streams failed, e.g. {next(iter(failed.values()))}"
        assert len(results) == 100 and all(r == [1] * 10 for r in results.values())
        assert served.metric("embedrt_errors_total", transport="grpc", code="RESOURCE_EXHAUSTED") == rejected_before
    finally:
        served.close()
