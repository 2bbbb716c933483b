"""OpenAI-compatible HTTP: parity with the library, base64, the official client, errors, health, metrics."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from _serving import Served

from embedrt import Embedder

TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café — 東京タワー 🚀", "word " * 300]


def test_embeddings_equal_the_library(served: Served, library: Embedder) -> None:
    reply = served.http.post("/v1/embeddings", json={"input": TEXTS, "model": "anything"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list" and body["model"] == library.manifest.name
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, library.embed(TEXTS), atol=1e-6)
    tokens = sum(e.length for e in library.prepare(TEXTS))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_single_string_base64_and_dimensions(served: Served, library: Embedder) -> None:
    reply = served.http.post("/v1/embeddings", json={"input": TEXTS[0], "model": "m", "dimensions": 32,
                                                     "encoding_format": "base64"})
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["data"]
    got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(got, library.embed(TEXTS[:1], dimensions=32)[0], atol=1e-6)


def test_the_official_openai_client_works(served: Served, library: Embedder) -> None:
    client = openai.OpenAI(base_url=f"{served.http.base_url}/v1", api_key="unused", max_retries=0)
    try:
        result = client.embeddings.create(model="tiny", input=TEXTS[:2])  # the client asks for base64
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(got, library.embed(TEXTS[:2]), atol=1e-6)
        assert result.usage.prompt_tokens > 0
        floats = client.embeddings.create(model="tiny", input="x", encoding_format="float", dimensions=48)
        assert len(floats.data[0].embedding) == 48
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(model="tiny", input="x", dimensions=7)
    finally:
        client.close()


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [], "model": "m"}, "input"),
    ({"input": ["a"] * 9, "model": "m"}, "input"),
    ({"input": "a", "model": "m", "dimensions": 1000}, "dimensions"),
    ({"input": ["ok", "word " * 300], "model": "m", "truncate": False}, "input[1]"),
    ({"input": [[1, 2, 3]] * 9, "model": "m"}, "input"),  # token ids count as inputs too
    ({"model": "m"}, "input"),
], ids=["empty", "too-many", "dimensions", "too-long", "too-many-token-lists", "missing"])
def test_invalid_input_is_400_naming_the_field(served: Served, body: dict, param: str | None) -> None:
    reply = served.http.post("/v1/embeddings", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["type"] == "invalid_request_error"
    assert "`input" in error["message"] or "`dimensions`" in error["message"]
    if param:
        assert error["param"] == param and f"`{param}`" in error["message"]


def test_bad_utf8_and_bad_json_are_400(served: Served) -> None:
    for raw in (b'{"input": ["\xff\xfe"], "model": "m"}', b'{"input": '):
        reply = served.http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == 400, reply.text


def test_health_and_metrics(served: Served) -> None:
    assert served.http.get("/health").status_code == 200
    before = served.metric("embedrt_requests_total", transport="http", code="OK")
    served.http.post("/v1/embeddings", json={"input": "x", "model": "m"})
    served.http.post("/v1/embeddings", json={"input": [], "model": "m"})
    assert served.metric("embedrt_requests_total", transport="http", code="OK") == before + 1
    assert served.metric("embedrt_errors_total", transport="http", code="INVALID_ARGUMENT") >= 1
    text = served.http.get("/metrics").text
    for name in ("embedrt_request_duration_seconds_bucket", "embedrt_queue_time_seconds_bucket",
                 "embedrt_batch_size_bucket", "embedrt_batch_tokens_bucket", "embedrt_queue_depth"):
        assert name in text
