"""Replicas on Ray Serve (``embedrt serve --ray``, ``embedrt.server.ray_serve``), on a local Ray of 2 CPUs; over
HTTP here, over gRPC in test_ray_grpc.py.

One Ray instance for the module (loopback only, no dashboard), shut down at its end even on failure;
the CLI test, first, runs its own in a subprocess (with gRPC, whose proxy binds every interface: Serve
has no host option for it). Selected with ``-m ray``; skipped without Ray.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from _serving import MAX_INPUTS, MAX_MESSAGE_BYTES, Served

import embedrt
from embedrt import Embedder, Reranker, load_manifest
from embedrt.config import RayServeConfig, SchedulerConfig, ServerConfig
from embedrt.server import pb2, pb2_grpc

pytest.importorskip("ray.serve", reason="needs the ray extra: pip install 'embedrt[ray]'")
import ray
from ray import serve

from embedrt.server.ray_serve import ModelOptions, ModelReplica, app_builder, build_app, replica_options

pytestmark = pytest.mark.ray

SOURCES = str(Path(embedrt.__file__).resolve().parents[1])  # this checkout's runtime/src, for every worker
APP, MULTI = "embedrt-test", "embedrt-multi"
LIMITS = ServerConfig(max_message_bytes=MAX_MESSAGE_BYTES)  # as the in-process servers it is compared with


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vectors(reply: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)


# -- the command, first: its own Ray instance in a subprocess, before the module's starts ----------------


def test_cli_serves_on_ray_and_stops_on_sigterm(artefact: Path, library: Embedder) -> None:
    port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "embedrt.cli", "serve", str(artefact), "--ray", "local", "--replicas", "1",
               "--cpus-per-replica", "0.5", "--http-port", str(port), "--grpc-port", str(grpc_port), "--grace", "5"]
    env = {**os.environ, "EMBEDRT_LOG_LEVEL": "WARNING", "PYTHONPATH": os.pathsep.join(
        [SOURCES, os.environ.get("PYTHONPATH", "")]), "RAY_ADDRESS": ""}
    # A session of its own: if the test fails, the process group (the command and the Ray it started) goes.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    seen: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line or re.search(r"embedrt serve: ready: .*Ray Serve; HTTP http://127\.0\.0\.1:\d+", line):
                break
            seen.append(line)
        assert line and f"{load_manifest(artefact).name} on onnxruntime" in line, "never ready:\n" + "".join(seen[-30:])
        assert f"; gRPC port {grpc_port} (every interface)" in line
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe from filling
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            texts = ["served by a replica", "on Ray Serve"]
            np.testing.assert_allclose(_vectors(client.post("/v1/embeddings", json={"input": texts})),
                                       library.embed(texts), atol=1e-6)
            assert client.get("/health").json() == {"status": "ready"}
        # gRPC through Serve's gRPC proxy (tests/server/test_ray_grpc.py has the rest); one application: no
        # `application` metadata needed.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = pb2_grpc.EmbedderStub(channel).Embed(pb2.EmbedRequest(inputs=texts), timeout=30)
        np.testing.assert_allclose([e.values for e in reply.embeddings], library.embed(texts), atol=1e-6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_ray_is_imported_only_when_asked(artefact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("import sys, embedrt, embedrt.server, embedrt.cli.serve\n"
            "from embedrt.cli import build_parser\n"
            "from embedrt.cli.serve import settings_from\n"
            "settings_from(build_parser().parse_args(['serve', 'art', '--ray']))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    # Without Ray installed, --ray says what to install.
    from embedrt.cli import build_parser
    from embedrt.cli.serve import _run
    from embedrt.errors import EmbedrtError

    for name in [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "embedrt.server.ray_"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # type: ignore[arg-type]
    with pytest.raises(EmbedrtError, match=re.escape("pip install 'embedrt[ray]' (missing: ray)")):
        _run(build_parser().parse_args(["serve", str(artefact), "--ray"]))


def test_deployment_options_follow_the_flags() -> None:
    queue = ModelOptions(scheduler=SchedulerConfig(max_queued_requests=9), grace_s=4)
    fixed = replica_options(RayServeConfig(replicas=3, cpus_per_replica=2, gpus_per_replica=0.5,
                                           max_ongoing_requests=12), queue)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}  # two replicas share a GPU
    assert (fixed["max_ongoing_requests"], fixed["max_queued_requests"]) == (12, 9)
    assert fixed["backpressure_config"] == {"status_code": 429, "retry_after_s": 1}
    assert fixed["graceful_shutdown_timeout_s"] == 5
    auto = replica_options(RayServeConfig(replicas="auto", min_replicas=2, max_replicas=5,
                                          target_ongoing_requests=8), ModelOptions())
    assert "num_replicas" not in auto and auto["ray_actor_options"] == {"num_cpus": 1.0}
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 8}
    for options in (fixed, auto):
        serve.deployment()(ModelReplica).options(**options)  # Serve takes them (it checks each on the spot)
    assert RayServeConfig(cpus_per_replica=1.5).threads == 2 and RayServeConfig(cpus_per_replica=0.25).threads == 1


# -- the module's Ray: one model, two CPU replicas, the replicas themselves the ingress ------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where replicas copy artefacts given by URL (``EMBEDRT_CACHE``), this module's own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cluster(cache: Path) -> Iterator[int]:
    """A local Ray of 2 CPUs with Serve's proxy on a free loopback port; everything stopped at the end."""
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": SOURCES, "EMBEDRT_CACHE": str(cache)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def replicas(cluster: int, artefact: Path) -> Iterator[httpx.Client]:
    """The tiny model in two replicas of half a CPU each, limits as the in-process ``served`` server's."""
    options = ModelOptions(scheduler=SchedulerConfig(max_inputs_per_request=MAX_INPUTS))
    serve.run(build_app([artefact], RayServeConfig(replicas=2, cpus_per_replica=0.5), options, LIMITS),
              name=APP, route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster}", timeout=30) as client:
        yield client
    serve.delete(APP)


@pytest.fixture(scope="module")
def name(artefact: Path) -> str:
    """The model's name: its deployment's too."""
    return load_manifest(artefact).name


def _replica_names(deployment: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]}


def _running(app: str, deployment: str) -> int:
    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))


def test_workers_run_this_checkout(cluster: int) -> None:
    @ray.remote(num_cpus=0)
    def where() -> str:
        import embedrt

        return str(embedrt.__file__)

    assert ray.get(where.remote()) == embedrt.__file__


def test_results_equal_the_library(replicas: httpx.Client, library: Embedder, name: str) -> None:
    assert _running(APP, name) == 2
    texts = ["Ray Serve replicas", "the quick brown fox", "", "Grüße, 世界 🚀", "one more text"]
    np.testing.assert_allclose(_vectors(replicas.post("/v1/embeddings", json={"input": texts})),
                               library.embed(texts), atol=1e-6)
    as_query = replicas.post("/v1/embeddings", json={"input": texts[:2], "query": True, "dimensions": 32})
    np.testing.assert_allclose(_vectors(as_query), library.embed_queries(texts[:2], dimensions=32), atol=1e-6)
    # Concurrent requests, spread over both replicas and merged within each, each answered with its own rows.
    many = [f"concurrent request {i} " + "word " * (i % 9) for i in range(48)]
    want = library.embed(many)
    replies: dict[int, np.ndarray] = {}

    def send(i: int) -> None:
        replies[i] = _vectors(replicas.post("/v1/embeddings", json={"input": many[i]}))[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(many))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    np.testing.assert_allclose(np.stack([replies[i] for i in range(len(many))]), want, atol=1e-6)


BAD = [  # (body, content type): each refused, the same way by both servers
    ({"input": []}, None),
    ({"input": ["a"] * (MAX_INPUTS + 1)}, None),
    ({"input": "x", "dimensions": 3}, None),
    ({"input": "x", "dimensions": "64"}, None),
    ({"input": ["fine", 7]}, None),
    (b"{not json", None),
    ({"input": "x"}, "text/plain"),
]


def _answer(client: httpx.Client, body: Any, content_type: str | None) -> tuple[int, Any, str | None]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = client.post("/v1/embeddings", content=payload,
                        headers={"Content-Type": content_type or "application/json"})
    return reply.status_code, reply.json(), reply.headers.get("retry-after")


def test_errors_map_as_in_embedrt_serve(replicas: httpx.Client, served: Served, library: Embedder) -> None:
    for body, content_type in BAD:
        on_ray = _answer(replicas, body, content_type)
        assert on_ray == _answer(served.http, body, content_type), body
        assert 400 <= on_ray[0] < 500 and on_ray[1]["error"]["code"], body
    assert _answer(replicas, {"input": []}, None)[:2] == (400, {"error": {
        "message": "invalid `input`: it is empty; send at least one text", "type": "invalid_request_error",
        "param": "input", "code": "INVALID_ARGUMENT"}})
    for path, method in (("/v2/embeddings", "POST"), ("/v1/embeddings", "GET")):
        assert replicas.request(method, path).json() == served.http.request(method, path).json()
    # The body limit holds: refused before it is read whole.
    big = replicas.post("/v1/embeddings", content=b'{"input": "' + b"x" * MAX_MESSAGE_BYTES + b'"}')
    assert big.status_code == 413 and big.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    # A bad request fails alone: the good ones beside it are answered.
    good = replicas.post("/v1/embeddings", json={"input": ["still", "serving"]})
    np.testing.assert_allclose(_vectors(good), library.embed(["still", "serving"]), atol=1e-6)


def test_health_and_models(replicas: httpx.Client, name: str) -> None:
    assert replicas.get("/health").json() == {"status": "ready"}
    assert replicas.get("/v1/models").json() == {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "embedrt", "task": "embed"}]}
    assert replicas.get("/info").json()["model"] == name


def test_a_replica_killed_under_load_is_replaced_and_no_answer_is_wrong(replicas: httpx.Client, library: Embedder,
                                                                         name: str) -> None:
    texts = [f"load {i}: " + "text " * (i % 11) for i in range(400)]
    want = library.embed(texts)
    before = _replica_names(name)
    assert len(before) == 2
    stop = threading.Event()
    answers: list[tuple[int, int, float, np.ndarray | None]] = []  # (text, status, when, vector)

    def client(offset: int) -> None:
        with httpx.Client(base_url=replicas.base_url, timeout=30) as own:
            i = offset
            while not stop.is_set():
                k = i % len(texts)
                try:
                    reply = own.post("/v1/embeddings", json={"input": texts[k]})
                except httpx.TransportError:
                    answers.append((k, 0, time.monotonic(), None))
                else:
                    vector = _vectors(reply)[0] if reply.status_code == 200 else None
                    answers.append((k, reply.status_code, time.monotonic(), vector))
                i += 7

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed = time.monotonic()
        replaced = None  # when a new replica ran beside the survivor
        while replaced is None and time.monotonic() < killed + 90:
            now = _replica_names(name)
            if victim not in now and len(now) == 2 and _running(APP, name) == 2:
                replaced = time.monotonic()
            time.sleep(0.25)
        deadline = time.monotonic() + 15  # keep the load on until answers come after the replacement too
        while replaced is not None and time.monotonic() < deadline and \
                sum(1 for _, status, when, _ in list(answers) if status == 200 and when > replaced) <= 10:
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    seen = (f"statuses {Counter(status for _, status, _, _ in answers)}, replicas before {sorted(before)}, "
            f"now {sorted(_replica_names(name))}, replaced after {replaced and replaced - killed}s")
    assert replaced is not None, f"not replaced within 90 s: {seen}; {serve.status()}"
    ok = [(k, v) for k, status, _, v in answers if status == 200]
    failed = {status for _, status, _, _ in answers if status != 200}
    assert failed <= {0, 500, 502, 503, 504}, seen  # a lost request may fail, never with a client error
    for k, vector in ok:  # no answer 200 carries another request's or a wrong vector
        np.testing.assert_allclose(vector, want[k], atol=1e-6, err_msg=f"text {k}; {seen}")
    assert sum(1 for _, status, when, _ in answers if status == 200 and when < killed) > 5, seen
    assert sum(1 for _, status, when, _ in answers if status == 200 and when > replaced) > 5, seen


# -- several models: the gateway routes by `model` to each model's deployment ----------------------------


@pytest.fixture(scope="module")
def several(cluster: int, replicas: httpx.Client, artefact: Path, reranker_artefact: Path,
            cache: Path) -> Iterator[str]:
    """An embedder and a reranker, one replica each (a quarter CPU), behind the gateway at /multi; each
    replica takes one request at a time, and two more may wait for it (so overload is easy to reach).
    The embedder is given by URL: its replica fetches a copy into the cache."""
    # Built as `serve run embedrt.server.ray_serve:app_builder ...` or a Serve config file would: from flags.
    args = {"artefact": [artefact.as_uri(), str(reranker_artefact)], "replicas": 1, "cpus_per_replica": 0.25,
            "max-ongoing-requests": 1, "max-queue": 2, "max-inputs": MAX_INPUTS, "max-message-bytes": MAX_MESSAGE_BYTES}
    serve.run(app_builder(args), name=MULTI, route_prefix="/multi")
    assert [p.name.startswith(artefact.name) for p in (cache / "artefacts").iterdir()] == [True]
    yield "/multi"
    serve.delete(MULTI)


def test_the_gateway_routes_by_model(replicas: httpx.Client, several: str, mixed: Served, library: Embedder,
                                     reranker: Reranker, name: str) -> None:
    models = replicas.get(f"{several}/v1/models").json()["data"]
    ranker = reranker.manifest.name
    assert [(m["id"], m["task"]) for m in models] == [(name, "embed"), (ranker, "rerank")]
    texts = ["behind the gateway", "two models"]
    embedded = replicas.post(f"{several}/v1/embeddings", json={"input": texts, "model": name})
    np.testing.assert_allclose(_vectors(embedded), library.embed(texts), atol=1e-6)
    documents = ["Paris is the capital of France.", "Berlin is in Germany.", "Bananas are yellow."]
    ranked = replicas.post(f"{several}/v1/rerank", json={"query": "capital of France?", "documents": documents})
    assert ranked.status_code == 200, ranked.text
    want = reranker.rerank("capital of France?", documents)
    assert [r["index"] for r in ranked.json()["results"]] == [r.index for r in want]
    np.testing.assert_allclose([r["relevance_score"] for r in ranked.json()["results"]], [r.score for r in want],
                               atol=1e-6)
    # Errors come back from the replicas with their type and field, as in one process.
    for path, body in (("/v1/embeddings", {"input": []}),
                       ("/v1/embeddings", {"input": "x", "model": ranker}),
                       ("/v1/rerank", {"query": "q", "documents": []}),
                       ("/rerank", {"query": "q", "texts": ["a", 5]}),
                       ("/v1/rerank", {"query": " ", "documents": ["a"]})):
        on_ray = replicas.post(f"{several}{path}", json=body)
        alone = mixed.http.post(path, json=body)
        assert (on_ray.status_code, on_ray.json()) == (alone.status_code, alone.json()), (path, body)


def test_overload_behind_the_gateway_is_429_in_our_shape(replicas: httpx.Client, several: str,
                                                          library: Embedder) -> None:
    texts = [f"overload {i} " + "many words to embed " * 12 for i in range(MAX_INPUTS)]
    want = library.embed(texts)
    replies: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=replicas.base_url, timeout=60) as own:
            replies.append(own.post(f"{several}/v1/embeddings", json={"input": texts}))

    threads = [threading.Thread(target=send) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    codes = sorted(r.status_code for r in replies)
    assert set(codes) == {200, 429}, codes
    for reply in replies:
        if reply.status_code == 200:
            np.testing.assert_allclose(_vectors(reply), want, atol=1e-6)
        else:
            assert reply.headers["retry-after"] == "1"
            assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
            assert reply.json()["error"]["type"] == "rate_limit_error"
