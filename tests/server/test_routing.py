"""Several models in one server: routing by `model`, /v1/models, Info, health, reflection, names, the CLI."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from _serving import Served, serve
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedrt import ArtefactError, Embedder, Reranker
from embedrt.cli import build_parser, main
from embedrt.cli.serve import OPTIONS, settings_from
from embedrt.server import SERVICE_NAME, pb2
from embedrt.server.stubs import RERANKER_SERVICE_NAME

TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café — 東京タワー 🚀"]
QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog.",
        "Retrieval systems rank passages for a query."]


def _embed_http(served: Served, model: str | None) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = {"input": TEXTS} | ({"model": model} if model is not None else {})
    reply = served.http.post("/v1/embeddings", json=body)
    return reply.status_code, reply.json()


def test_models_lists_every_model_with_its_task(multi: Served, library: Embedder, small_embedder: Embedder,
                                                reranker: Reranker, cross_encoder: Reranker) -> None:
    data = multi.http.get("/v1/models").json()["data"]
    want = [(m.manifest.name, task) for m, task in ((library, "embed"), (small_embedder, "embed"),
                                                     (reranker, "rerank"), (cross_encoder, "rerank"))]
    assert [(d["id"], d["task"]) for d in data] == want  # in the order the artefacts were given
    assert len({name for name, _ in want}) == 4 and all(d["object"] == "model" for d in data)


def test_embeddings_go_to_the_named_model(multi: Served, library: Embedder, small_embedder: Embedder) -> None:
    for model in (library, small_embedder):
        name = model.manifest.name
        status, body = _embed_http(multi, name)
        assert status == 200 and body["model"] == name
        np.testing.assert_allclose([d["embedding"] for d in body["data"]], model.embed(TEXTS), atol=1e-6)
        reply = multi.stub.Embed(pb2.EmbedRequest(inputs=TEXTS, model=name), timeout=30)
        assert reply.model == name
        np.testing.assert_allclose([e.values for e in reply.embeddings], model.embed(TEXTS), atol=1e-6)
        streamed = list(multi.stub.EmbedStream(iter([pb2.EmbedRequest(inputs=TEXTS[:1], model=name)] * 3),
                                               timeout=30))
        assert [r.model for r in streamed] == [name] * 3
        assert len(streamed[0].embeddings[0].values) == model.manifest.dimensions_range[1]


def test_reranks_go_to_the_named_model(multi: Served, reranker: Reranker, cross_encoder: Reranker) -> None:
    for model in (reranker, cross_encoder):
        name = model.manifest.name
        want = [(r.index, r.score) for r in model.rerank(QUERY, DOCS)]
        body = multi.http.post("/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCS}).json()
        assert body["model"] == name
        got = [(r["index"], r["relevance_score"]) for r in body["results"]]
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
        tei = multi.http.post("/rerank", json={"model": name, "query": QUERY, "texts": DOCS}).json()
        np.testing.assert_allclose([r["score"] for r in tei], [s for _, s in want], atol=1e-6)
        reply = multi.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS, model=name), timeout=30)
        assert reply.model == name
        np.testing.assert_allclose([r.relevance_score for r in reply.results], [s for _, s in want], atol=1e-6)


def test_an_unknown_model_among_several_is_404_naming_them(multi: Served, library: Embedder,
                                                           small_embedder: Embedder) -> None:
    status, body = _embed_http(multi, "no-such-model")
    assert status == 404, body
    error = body["error"]
    assert error["code"] == "NOT_FOUND" and error["param"] == "model"
    assert library.manifest.name in error["message"] and small_embedder.manifest.name in error["message"]
    with pytest.raises(grpc.RpcError) as info:
        multi.stub.Embed(pb2.EmbedRequest(inputs=TEXTS, model="no-such-model"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and library.manifest.name in info.value.details()
    reply = multi.http.post("/v1/rerank", json={"model": "nope", "query": QUERY, "documents": DOCS})
    assert reply.status_code == 404 and "tiny" in reply.json()["error"]["message"]


def test_no_model_among_several_is_400_asking_for_one(multi: Served, library: Embedder) -> None:
    status, body = _embed_http(multi, None)
    assert status == 400 and body["error"]["param"] == "model" and "name one" in body["error"]["message"]
    assert library.manifest.name in body["error"]["message"]
    with pytest.raises(grpc.RpcError) as info:
        multi.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "`model`" in info.value.details()


def test_a_request_for_the_other_task_names_the_right_endpoint(mixed: Served, library: Embedder,
                                                                reranker: Reranker) -> None:
    status, body = _embed_http(mixed, reranker.manifest.name)
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT" and body["error"]["param"] == "model"
    assert "rerank model" in body["error"]["message"] and "POST /v1/rerank" in body["error"]["message"]
    reply = mixed.http.post("/v1/rerank", json={"model": library.manifest.name, "query": QUERY, "documents": DOCS})
    assert reply.status_code == 400 and "POST /v1/embeddings" in reply.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as info:
        mixed.stub.Embed(pb2.EmbedRequest(inputs=TEXTS, model=reranker.manifest.name), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "embedrt.v1.Reranker/Rerank" in info.value.details()


def test_one_model_per_task_takes_any_name(mixed: Served, library: Embedder) -> None:
    for name in ("text-embedding-3-small", None, ""):
        status, body = _embed_http(mixed, name)
        assert status == 200 and body["model"] == library.manifest.name
    reply = mixed.http.post("/v1/rerank", json={"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS})
    assert reply.status_code == 200, reply.text


def test_info_takes_a_model(mixed: Served, library: Embedder, reranker: Reranker) -> None:
    info = mixed.stub.Info(pb2.InfoRequest(model=reranker.manifest.name), timeout=10)
    assert (info.model, info.task, info.max_length) == (reranker.manifest.name, "rerank", reranker.manifest.max_length)
    assert (info.pair_encoding, info.activation, info.backend) == ("template", "sigmoid", "onnxruntime")
    assert info.default_instruction == reranker.spec.prompt.default_instruction and info.dimensions == 0
    embedder = mixed.stub.Info(pb2.InfoRequest(model=library.manifest.name), timeout=10)
    assert (embedder.task, embedder.dimensions) == ("embed", library.manifest.dimensions_range[1])
    http = mixed.http.get("/info", params={"model": reranker.manifest.name}).json()
    assert http["task"] == "rerank" and http["model"] == reranker.manifest.name and "dimensions" not in http
    with pytest.raises(grpc.RpcError) as info_error:
        mixed.stub.Info(pb2.InfoRequest(), timeout=10)  # two models: which?
    assert info_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = mixed.http.get("/info", params={"model": "nope"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "NOT_FOUND"


def test_health_and_reflection_cover_the_reranker(mixed: Served) -> None:
    health = health_pb2_grpc.HealthStub(mixed.channel)
    for name in ("", SERVICE_NAME, RERANKER_SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    stub = reflection_pb2_grpc.ServerReflectionStub(mixed.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert {SERVICE_NAME, RERANKER_SERVICE_NAME} <= {s.name for s in reply.list_services_response.service}


def test_a_service_without_a_model_of_its_task_is_not_serving(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)  # embeddings only
    status = {name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
              for name in ("", SERVICE_NAME, RERANKER_SERVICE_NAME)}
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert status == {"": serving, SERVICE_NAME: serving, RERANKER_SERVICE_NAME: not_serving}


def test_two_artefacts_of_one_name_stop_the_server(artefact: Path) -> None:
    served = serve([artefact, artefact], wait=False)
    try:
        with pytest.raises(ArtefactError, match="both named"):
            served.server.wait_ready()
    finally:
        served.close()


def test_the_cli_refuses_two_of_one_name_before_binding(artefact: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDRT_LOG_LEVEL", "WARNING")
    code = main(["serve", str(artefact), str(artefact), "--grpc-port", "0", "--http-port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("embedrt serve: error: ") and "both named" in err[0]


def test_artefacts_come_from_the_command_line_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.setenv("EMBEDRT_ARTEFACT", " embedder , reranker,")
    from_env = settings_from(build_parser().parse_args(["serve"]))
    assert from_env.artefacts == ("embedder", "reranker") and from_env.artefact == "embedder"
    given = settings_from(build_parser().parse_args(["serve", "a", "b", "--max-inputs", "5"]))
    assert given.artefacts == ("a", "b") and given.scheduler.max_inputs_per_request == 5
