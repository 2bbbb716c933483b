"""Reranking served: Cohere's /v1/rerank, TEI's /rerank and gRPC Rerank against the library's Reranker,
every bad input, batching across requests, admission, a failing batch."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _serving import MAX_INPUTS, MAX_MESSAGE_BYTES, Hooks, Served, serve

from embedrt import Reranker
from embedrt.config import SchedulerConfig
from embedrt.server import pb2
from embedrt.server.stubs import RERANKER_SERVICE_NAME

QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b", "Der schnelle braune Fuchs springt über den faulen Hund. 🚀",
        "Retrieval systems rank passages for a query."]
LONG = "Paris is the capital of France. " + "filler words about nothing " * 120  # over the 192-token limit
# Over the limit too, in 5 windows ("max_window"): with two short documents, within MAX_INPUTS pairs.
WINDOWED = "Paris is the capital of France. " + "filler words about nothing " * 20
TASK = "Given a question, find the passage that answers it"


def _expected(reranker: Reranker, query: str, documents: list[str], **options: Any) -> list[tuple[int, float, float]]:
    return [(r.index, r.score, r.logit) for r in reranker.rerank(query, documents, **options)]


def _tokens(reranker: Reranker, query: str, documents: list[str], **options: Any) -> int:
    return sum(item.length for item in reranker.prepare_ranking(query, documents, **options).items)


def _assert_ranked(got: list[tuple[int, float]], want: list[tuple[int, float, float]], logits: bool = False) -> None:
    assert [i for i, _ in got] == [i for i, _, _ in want]
    np.testing.assert_allclose([s for _, s in got], [w[2] if logits else w[1] for w in want], atol=1e-6)


# -- Cohere / Jina: POST /v1/rerank ------------------------------------------------------------------


def test_cohere_rerank_equals_the_library(mixed: Served, reranker: Reranker) -> None:
    reply = mixed.http.post("/v1/rerank", json={"model": "any-name", "query": QUERY, "documents": DOCS})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == reranker.manifest.name and body["id"]
    _assert_ranked([(r["index"], r["relevance_score"]) for r in body["results"]], _expected(reranker, QUERY, DOCS))
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all("document" not in r for r in body["results"])  # Cohere's default: return_documents false
    assert body["usage"] == {"total_tokens": _tokens(reranker, QUERY, DOCS)}


def test_cohere_v2_rerank_is_the_same_ranking_with_cohere_s_meta(mixed: Served, reranker: Reranker) -> None:
    reply = mixed.http.post("/v2/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS,
                                                "top_n": 3, "max_tokens_per_doc": 4096})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    _assert_ranked([(r["index"], r["relevance_score"]) for r in body["results"]],
                   _expected(reranker, QUERY, DOCS, top_n=3))
    tokens = _tokens(reranker, QUERY, DOCS)
    assert body["meta"] == {"api_version": {"version": "2"},
                            "billed_units": {"search_units": 1, "input_tokens": tokens}}
    assert body["usage"] == {"total_tokens": tokens}
    bad = mixed.http.post("/v2/rerank", json={"query": QUERY, "documents": []})
    assert bad.status_code == 400 and "documents" in bad.json()["error"]["message"]


def test_cohere_top_n_documents_instruction_and_windows(mixed: Served, reranker: Reranker) -> None:
    body = mixed.http.post("/v1/rerank", json={"model": "m", "query": QUERY, "documents": DOCS, "top_n": 2,
                                               "return_documents": True, "instruction": TASK}).json()
    want = _expected(reranker, QUERY, DOCS, top_n=2, instruction=TASK)
    _assert_ranked([(r["index"], r["relevance_score"]) for r in body["results"]], want)
    assert [r["document"] for r in body["results"]] == [{"text": DOCS[i]} for i, _, _ in want]
    clamped = mixed.http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:3], "top_n": 50}).json()
    assert len(clamped["results"]) == 3  # top_n above the count: every document
    docs = [WINDOWED, *DOCS[:2]]
    windowed = mixed.http.post("/v1/rerank", json={"query": QUERY, "documents": docs,
                                                   "long_documents": "max_window"}).json()
    want = _expected(reranker, QUERY, docs, long_documents="max_window")
    _assert_ranked([(r["index"], r["relevance_score"]) for r in windowed["results"]], want)
    assert windowed["usage"]["total_tokens"] == _tokens(reranker, QUERY, docs, long_documents="max_window")


# -- text-embeddings-inference: POST /rerank ---------------------------------------------------------


def test_tei_rerank_scores_raw_scores_and_texts(mixed: Served, reranker: Reranker) -> None:
    want = _expected(reranker, QUERY, DOCS)
    reply = mixed.http.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert reply.status_code == 200, reply.text
    _assert_ranked([(r["index"], r["score"]) for r in reply.json()], want)
    assert all(set(r) == {"index", "score"} for r in reply.json())
    raw = mixed.http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True,
                                           "return_text": True}).json()
    _assert_ranked([(r["index"], r["score"]) for r in raw], want, logits=True)
    assert [r["text"] for r in raw] == [DOCS[i] for i, _, _ in want]


def test_tei_truncate_false_refuses_a_long_text_naming_it(mixed: Served) -> None:
    reply = mixed.http.post("/rerank", json={"query": QUERY, "texts": ["short", LONG], "truncate": False})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "texts[1]" and "`texts[1]`" in error["message"] and "truncate" in error["message"]
    assert mixed.http.post("/rerank", json={"query": QUERY, "texts": ["short", LONG]}).status_code == 200


# -- gRPC Rerank ---------------------------------------------------------------------------------------


def test_grpc_rerank_equals_the_library(mixed: Served, reranker: Reranker) -> None:
    reply = mixed.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS), timeout=30)
    want = _expected(reranker, QUERY, DOCS)
    _assert_ranked([(r.index, r.relevance_score) for r in reply.results], want)
    _assert_ranked([(r.index, r.logit) for r in reply.results], want, logits=True)
    assert reply.model == reranker.manifest.name and not any(r.HasField("document") for r in reply.results)
    assert reply.usage.total_tokens == _tokens(reranker, QUERY, DOCS)
    top = mixed.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS, top_n=2, instruction=TASK,
                                                     return_documents=True), timeout=30)
    want = _expected(reranker, QUERY, DOCS, top_n=2, instruction=TASK)
    _assert_ranked([(r.index, r.relevance_score) for r in top.results], want)
    assert [r.document for r in top.results] == [DOCS[i] for i, _, _ in want]


# -- bad input: each a 400 / INVALID_ARGUMENT naming its field, failing alone -------------------------

BAD = [  # (Cohere body, field), each also sent over gRPC and, where TEI has the field, to /rerank
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": ["d"] * (MAX_INPUTS + 1)}, "documents"),
    ({"query": QUERY, "documents": ["ok", 7]}, "documents[1]"),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": DOCS, "top_n": -3}, "top_n"),
    ({"query": "", "documents": DOCS}, "query"),
    ({"query": "   ", "documents": DOCS}, "query"),
    ({"documents": DOCS}, "query"),
    ({"query": QUERY, "documents": "one document"}, "documents"),
    ({"query": QUERY, "documents": DOCS, "long_documents": "chunks"}, "long_documents"),
]
IDS = ["empty", "too-many", "not-a-string", "top-n-zero", "top-n-negative", "empty-query",
       "blank-query", "no-query", "string-documents", "long-documents"]


@pytest.mark.parametrize(("body", "field"), BAD, ids=IDS)
def test_bad_rerank_input_is_400_naming_the_field(mixed: Served, body: dict[str, Any], field: str) -> None:
    reply = mixed.http.post("/v1/rerank", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["param"] == field, error
    assert f"`{field}`" in error["message"]
    tei = {"query": body.get("query"), "texts": body.get("documents")}
    if "top_n" not in body and "long_documents" not in body and "query" in body:
        reply = mixed.http.post("/rerank", content=json.dumps(tei).encode())
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == field.replace("documents", "texts")


@pytest.mark.parametrize(("body", "field"), [(b, f) for b, f in BAD if f != "documents[1]" and
                                             isinstance(b.get("documents"), list)],
                         ids=[i for i, (b, f) in zip(IDS, BAD, strict=True) if f != "documents[1]" and
                              isinstance(b.get("documents"), list)])
def test_bad_rerank_input_is_invalid_argument_over_grpc(mixed: Served, body: dict[str, Any], field: str) -> None:
    request = pb2.RerankRequest(**body)
    with pytest.raises(grpc.RpcError) as info:
        mixed.rerank_stub.Rerank(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"`{field}`" in info.value.details()


def test_text_that_is_not_utf8_is_400(mixed: Served) -> None:
    """JSON cannot carry it (a lone surrogate escape is invalid JSON), protobuf refuses it on parsing; the
    core's own check (`documents[i]`) is for library callers (tests/runtime/test_core.py)."""
    for path, key in (("/v1/rerank", "documents"), ("/rerank", "texts")):
        raw = b'{"query": "q", "%s": ["ok", "bad \\ud800"]}' % key.encode()
        reply = mixed.http.post(path, content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"], reply.text
        raw = b'{"query": "q", "%s": ["ok", "bad \xff\xfe"]}' % key.encode()
        assert mixed.http.post(path, content=raw).status_code == 400
    raw = pb2.RerankRequest(query=QUERY, documents=["ab"]).SerializeToString().replace(b"ab", b"\xff\xfe")
    call = mixed.channel.unary_unary(f"/{RERANKER_SERVICE_NAME}/Rerank", request_serializer=None,
                                     response_deserializer=pb2.RerankResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(raw, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in info.value.details()
    assert len(mixed.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS), timeout=10).results) == 5


def test_max_window_windows_count_against_the_per_request_limit(mixed: Served) -> None:
    """A long document in "max_window" mode is several pairs; the limit on pairs per request bounds them, so
    one request cannot hold the backend with thousands of windows. Under the limit it ranks as usual."""
    endless = "filler words about nothing " * 40 * MAX_INPUTS  # each window ~190 tokens: far more than the limit
    reply = mixed.http.post("/v1/rerank", json={"query": QUERY, "documents": ["short", endless],
                                                "long_documents": "max_window"})
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert "`documents`" in message and f"limit of {MAX_INPUTS}" in message and "document 1" in message
    ok = mixed.http.post("/v1/rerank", json={"query": QUERY, "documents": ["short", WINDOWED],
                                             "long_documents": "max_window"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_body_limits_hold_on_the_rerank_routes(mixed: Served) -> None:
    big = {"query": QUERY, "documents": ["x" * (MAX_MESSAGE_BYTES // 2)] * 3}
    for path, body in (("/v1/rerank", big), ("/rerank", {"query": QUERY, "texts": big["documents"]})):
        reply = mixed.http.post(path, content=json.dumps(body).encode())
        assert reply.status_code == 413, reply.text
        bomb = gzip.compress(json.dumps(body).encode())  # small on the wire, too large once inflated
        reply = mixed.http.post(path, content=bomb, headers={"content-encoding": "gzip"})
        assert reply.status_code == 413, reply.text
    assert mixed.http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200


# -- batching: concurrent requests share backend calls and get what they would alone ------------------


def test_concurrent_reranks_are_batched_and_equal_alone(mixed: Served, reranker: Reranker) -> None:
    requests = [(f"{QUERY} {i}", [DOCS[(i + k) % len(DOCS)] + f" #{i}" for k in range(1 + i % 4)])
                for i in range(24)]
    label = {"model": reranker.manifest.name}
    calls_before = mixed.metric("embedrt_batch_requests_count", **label)
    merged_before = mixed.metric("embedrt_batch_requests_sum", **label)
    futures = [mixed.rerank_stub.Rerank.future(pb2.RerankRequest(query=q, documents=d), timeout=30)
               for q, d in requests]
    replies = [f.result() for f in futures]
    calls = mixed.metric("embedrt_batch_requests_count", **label) - calls_before
    merged = mixed.metric("embedrt_batch_requests_sum", **label) - merged_before
    assert merged == 24 and calls < 24, f"24 concurrent requests took {calls} backend calls"
    for (query, docs), reply in zip(requests, replies, strict=True):
        _assert_ranked([(r.index, r.relevance_score) for r in reply.results], _expected(reranker, query, docs))


# -- admission and failures on a reranker-only server --------------------------------------------------


@pytest.fixture(scope="module")
def gated(reranker_artefact: Path) -> Iterator[Served]:
    hooks = Hooks()
    instance = serve([reranker_artefact], scheduler=SchedulerConfig(max_queued_requests=2, max_wait_us=0),
                     hooks=hooks)
    yield instance
    hooks.gate.set()
    instance.close()


def test_overload_deadlines_and_failures_as_for_embeddings(gated: Served) -> None:
    hooks = gated.hooks
    request = pb2.RerankRequest(query=QUERY, documents=DOCS[:2])
    hooks.gate.clear()  # the backend holds: admitted requests stay in the system
    try:
        running = gated.rerank_stub.Rerank.future(request, timeout=30)
        assert hooks.entered.wait(10)
        expiring = gated.rerank_stub.Rerank.future(request, timeout=0.5)  # queued behind it, then too late
        deadline = time.monotonic() + 10
        while gated.metric("embedrt_queue_depth") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            gated.rerank_stub.Rerank(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = gated.http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]})
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        with pytest.raises(grpc.RpcError) as info:
            expiring.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        hooks.gate.set()
    assert len(running.result().results) == 2
    hooks.fail_next = True
    with pytest.raises(grpc.RpcError) as info:
        gated.rerank_stub.Rerank(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL and "injected backend failure" in info.value.details()
    assert len(gated.rerank_stub.Rerank(request, timeout=10).results) == 2  # the server keeps serving
    assert gated.http.get("/health").status_code == 200


def test_a_reranker_only_server_redirects_embeddings(gated: Served) -> None:
    reply = gated.http.post("/v1/embeddings", json={"input": "x", "model": "m"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "model"
    assert "POST /v1/rerank" in reply.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as info:
        gated.embed(["x"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "embedrt.v1.Reranker/Rerank" in info.value.details()


def test_many_clients_at_once_all_get_answers(mixed: Served, reranker: Reranker) -> None:
    """Threads mixing both HTTP shapes and gRPC against one core: every answer is the library's."""
    want = _expected(reranker, QUERY, DOCS)
    failures: list[str] = []

    def client(n: int) -> None:
        try:
            if n % 3 == 0:
                got = [(r["index"], r["relevance_score"]) for r in mixed.http.post(
                    "/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]]
            elif n % 3 == 1:
                got = [(r["index"], r["score"]) for r in mixed.http.post(
                    "/rerank", json={"query": QUERY, "texts": DOCS}).json()]
            else:
                reply = mixed.rerank_stub.Rerank(pb2.RerankRequest(query=QUERY, documents=DOCS), timeout=30)
                got = [(r.index, r.relevance_score) for r in reply.results]
            _assert_ranked(got, want)
        except Exception as exc:  # collected: an assertion in a thread would be lost
            failures.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
