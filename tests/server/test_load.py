"""Behaviour under load: cross-request batching, overload, backend failure, not ready, draining."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from _serving import Hooks, Served, serve
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedrt.config import SchedulerConfig
from embedrt.server import pb2


def _health(served: Served) -> int:
    stub = health_pb2_grpc.HealthStub(served.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_concurrent_requests_are_batched_with_results_identical_to_sequential(artefact: Path) -> None:
    served = serve(artefact, scheduler=SchedulerConfig(max_wait_us=20_000))
    try:
        texts = [f"request {i}: " + "some words " * (i % 7) for i in range(64)]
        sequential = [served.embed([t]) for t in texts]
        batches = served.metric("embedrt_batch_size_count")
        requests = [pb2.EmbedRequest(inputs=[t]) for t in texts]
        futures = [served.stub.Embed.future(r, timeout=30) for r in requests]
        replies = [f.result() for f in futures]
        used = served.metric("embedrt_batch_size_count") - batches
        assert used <= 16, f"64 concurrent requests took {used} backend batches"
        assert served.metric("embedrt_batch_requests_sum") > 64  # the sequential ones plus the merged ones
        for reply, alone in zip(replies, sequential, strict=True):
            got = np.array([e.values for e in reply.embeddings], dtype=np.float32)
            np.testing.assert_allclose(got, alone, atol=1e-6)  # padding in a shared batch changes nothing
    finally:
        served.close()


def test_overload_is_refused_quickly_on_both_transports(artefact: Path) -> None:
    hooks = Hooks()
    served = serve(artefact, scheduler=SchedulerConfig(max_queued_requests=3, max_wait_us=0), hooks=hooks)
    try:
        hooks.gate.clear()  # the backend holds: admitted requests stay in the system
        admitted = [served.stub.Embed.future(pb2.EmbedRequest(inputs=[f"t{i}"]), timeout=30) for i in range(3)]
        assert hooks.entered.wait(10)
        deadline = time.monotonic() + 10
        while served.metric("embedrt_queue_depth") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            served.stub.Embed(pb2.EmbedRequest(inputs=["one too many"]), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = served.http.post("/v1/embeddings", json={"input": "one too many", "model": "m"})
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert time.monotonic() - started < 2.0
        hooks.gate.set()
        assert all(len(f.result().embeddings) == 1 for f in admitted)  # nothing admitted was lost
    finally:
        hooks.gate.set()
        served.close()


def test_a_backend_failure_fails_its_batch_and_the_server_keeps_serving(artefact: Path) -> None:
    hooks = Hooks()
    served = serve(artefact, hooks=hooks)
    try:
        hooks.fail_next = True
        with pytest.raises(grpc.RpcError) as info:
            served.embed(["this batch fails"])
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "injected backend failure" in info.value.details()
        hooks.fail_next = True
        reply = served.http.post("/v1/embeddings", json={"input": "so does this one", "model": "m"})
        assert reply.status_code == 500 and reply.json()["error"]["code"] == "INTERNAL"
        assert served.embed(["the next one works"]).shape == (1, 64)
        assert served.http.get("/health").status_code == 200
        assert served.metric("embedrt_errors_total", transport="grpc", code="INTERNAL") == 1
    finally:
        served.close()


def test_not_ready_until_loaded_and_warmed_up(artefact: Path) -> None:
    hooks = Hooks()
    hooks.loaded.clear()  # loading blocks until the test lets it go
    served = serve(artefact, hooks=hooks, wait=False)
    try:
        assert _health(served) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert served.http.get("/health").status_code == 503
        with pytest.raises(grpc.RpcError) as info:
            served.embed(["too early"])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = served.http.post("/v1/embeddings", json={"input": "too early", "model": "m"})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "UNAVAILABLE"
        hooks.loaded.set()
        served.server.wait_ready()
        assert _health(served) == health_pb2.HealthCheckResponse.SERVING
        assert served.http.get("/health").status_code == 200
    finally:
        hooks.loaded.set()
        served.close()


def test_draining_finishes_admitted_work_and_refuses_new(artefact: Path) -> None:
    hooks = Hooks()
    served = serve(artefact, scheduler=SchedulerConfig(max_wait_us=0), hooks=hooks)
    stopped: list[bool] = []
    try:
        hooks.gate.clear()
        admitted = [served.stub.Embed.future(pb2.EmbedRequest(inputs=[f"t{i}"]), timeout=30) for i in range(4)]
        assert hooks.entered.wait(10)
        time.sleep(0.1)  # all four admitted
        stopper = threading.Thread(target=lambda: stopped.append(served.server.stop(grace=20)))
        stopper.start()
        deadline = time.monotonic() + 10
        while served.server.state.phase != "draining" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _health(served) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            served.embed(["too late"])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        late = served.http.post("/v1/embeddings", json={"input": "too late", "model": "m"})
        assert late.status_code == 503
        hooks.gate.set()
        assert all(len(f.result().embeddings) == 1 for f in admitted)
        stopper.join(30)
        assert stopped == [True]
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):
            served.http.get("/health")
    finally:
        hooks.gate.set()
        served.channel.close()
        served.http.close()
