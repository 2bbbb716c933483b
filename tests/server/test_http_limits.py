"""HTTP bodies as a hostile or careless client sends them (issue 13, items 1, 3, 4, 5, 6).

Raw sockets where httpx would be too polite: chunked bodies without an end, clients that stop
half-way or hang up. Every refusal has OpenAI's error shape and names the limit and its flag.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _serving import EPHEMERAL, Served, serve
from tokenizers import Tokenizer

from embedrt import Embedder
from embedrt.config import SchedulerConfig

LIMIT = 4096
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def small(artefact: Path) -> Iterator[Served]:
    config = replace(EPHEMERAL, max_message_bytes=LIMIT, body_timeout_s=TIMEOUT)
    instance = serve(artefact, config, scheduler=SchedulerConfig(max_inputs_per_request=8))
    yield instance
    instance.close()


def _connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.server.ports.http), timeout=5)
    sock.settimeout(5)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response; the server closing the socket ends the body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _head(content_length: int | None = None, **extra: str) -> bytes:
    lines = ["POST /v1/embeddings HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _error(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- item 1: the size limit holds while reading ---------------------------------------------------

def test_a_chunked_body_is_cut_off_at_the_limit(small: Served) -> None:
    with _connect(small) as sock:
        start = b'{"input": "' + b"x" * 1000
        # Well past the limit, and never the final chunk: the server must answer without waiting for it.
        sock.sendall(_head() + b"%x\r\n%s\r\n" % (len(start), start) + (b"400\r\n" + b"y" * 1024 + b"\r\n") * 8)
        status, headers, body = _read_response(sock)
        assert status == 413
        error = _error(body)
        assert error["code"] == "RESOURCE_EXHAUSTED" and "--max-message-bytes" in error["message"]
        assert str(LIMIT) in error["message"]
        assert headers.get("connection") == "close" and _closed_by_server(sock)


def test_a_declared_length_over_the_limit_is_refused_before_reading(small: Served) -> None:
    with _connect(small) as sock:
        sock.sendall(_head(10 * LIMIT))
        status, _, body = _read_response(sock)
    assert status == 413 and "--max-message-bytes" in _error(body)["message"]


def test_gzip_is_decompressed_within_the_limit(small: Served, library: Embedder) -> None:
    texts = ["compressed text", "another one"]
    packed = gzip.compress(json.dumps({"input": texts, "model": "m"}).encode())
    reply = small.http.post("/v1/embeddings", content=packed,
                            headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert reply.status_code == 200, reply.text
    got = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, library.embed(texts), atol=1e-6)

    bomb = gzip.compress(json.dumps({"input": "z" * (50 * LIMIT)}).encode())  # small packed, 50x the limit unpacked
    assert len(bomb) < LIMIT
    reply = small.http.post("/v1/embeddings", content=bomb, headers={"content-encoding": "gzip"})
    assert reply.status_code == 413 and "decompressed" in reply.json()["error"]["message"]

    reply = small.http.post("/v1/embeddings", content=b"not gzip at all", headers={"content-encoding": "gzip"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "INVALID_ARGUMENT"
    reply = small.http.post("/v1/embeddings", content=b"{}", headers={"content-encoding": "br"})
    assert reply.status_code == 415 and "Content-Encoding br" in reply.json()["error"]["message"]


# -- items 3 and 4: clients that stop sending -----------------------------------------------------

def _wait_for_metric(served: Served, name: str, value: float, **labels: str) -> float:
    deadline = time.monotonic() + 5
    while (got := served.metric(name, **labels)) < value and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def test_a_client_hanging_up_mid_body_is_cancelled_not_internal(small: Served) -> None:
    cancelled = small.metric("embedrt_requests_total", transport="http", code="CANCELLED")
    internal = small.metric("embedrt_requests_total", transport="http", code="INTERNAL")
    for _ in range(3):
        with _connect(small) as sock:
            sock.sendall(_head(1000) + b'{"input": "only part of it')
    assert _wait_for_metric(small, "embedrt_requests_total", cancelled + 3, transport="http",
                            code="CANCELLED") == cancelled + 3
    assert small.metric("embedrt_requests_total", transport="http", code="INTERNAL") == internal


def test_a_body_that_stops_arriving_times_out(small: Served) -> None:
    with _connect(small) as sock:
        started = time.monotonic()
        sock.sendall(_head(1000) + b'{"input": "and then nothing')
        status, headers, body = _read_response(sock)
        waited = time.monotonic() - started
        assert status == 408 and TIMEOUT * 0.9 <= waited < TIMEOUT + 2
        error = _error(body)
        assert error["code"] == "DEADLINE_EXCEEDED" and "--body-timeout" in error["message"]
        assert headers.get("connection") == "close" and _closed_by_server(sock)


def test_many_stalled_bodies_do_not_stop_other_requests(small: Served) -> None:
    stalled = [_connect(small) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(_head(1000) + b'{"input": "')
        started = time.monotonic()
        assert small.http.post("/v1/embeddings", json={"input": "still served"}).status_code == 200
        assert time.monotonic() - started < 1.0
        assert all(_read_response(sock)[0] == 408 for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()


# -- item 5: types, content types, routes -------------------------------------------------------

@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": "a", "dimensions": "64"}, "dimensions", ["expected an integer", 'a string ("64")']),
    ({"input": "a", "normalize": "yes"}, "normalize", ["true or false"]),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", ['"base64"']),
    ({"input": {"text": "a"}}, "input", ["a list of strings", "got an object"]),
    ({"input": ["a", 1]}, "input", ["token ids"]),
    ({"input": 5}, "input", ["got an integer"]),
    ({"model": "m"}, "input", ["`input` is required"]),
], ids=["dimensions-string", "bool-string", "encoding", "input-object", "input-mixed", "input-int", "missing"])
def test_wrong_types_are_400_naming_the_field(small: Served, body: dict, param: str, words: list[str]) -> None:
    reply = small.http.post("/v1/embeddings", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["code"] == "INVALID_ARGUMENT"
    assert f"`{param}`" in error["message"]
    for word in words:
        assert word in error["message"]
    assert "expected `input` as" not in error["message"] or param == "input"


@pytest.mark.parametrize(("raw", "words"), [
    (b"[1, 2]", "must be a JSON object"), (b'{"input": ', "not valid JSON"),
], ids=["not-an-object", "truncated"])
def test_bodies_that_are_not_a_request_are_400(small: Served, raw: bytes, words: str) -> None:
    reply = small.http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]


def test_a_body_that_is_not_json_is_415(small: Served) -> None:
    reply = small.http.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": "text/plain"})
    assert reply.status_code == 415
    assert "application/json" in _error(reply.content)["message"]
    charset = small.http.post("/v1/embeddings", content=b'{"input": "a"}',
                              headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


def test_unknown_routes_and_methods_answer_in_openai_shape(small: Served) -> None:
    missing = small.http.post("/v1/nothing", json={"input": "a"})
    assert missing.status_code == 404 and _error(missing.content)["code"] == "NOT_FOUND"
    assert "/v1/embeddings" in _error(missing.content)["message"]
    wrong = small.http.get("/v1/embeddings")
    assert wrong.status_code == 405 and _error(wrong.content)["code"] == "UNIMPLEMENTED"
    assert "POST" in wrong.headers.get("allow", "")


def test_messages_speak_http_not_python(small: Served) -> None:
    reply = small.http.post("/v1/embeddings", json={"input": ["ok", "word " * 300], "truncate": False})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == "input[1]"
    assert "truncate=True" not in error["message"] and "`truncate`" in error["message"]
    reply = small.http.post("/v1/embeddings", content=b'{"input": ["ok", "bad \\ud800"]}')  # a lone surrogate
    assert reply.status_code == 400 and "JSON" in reply.json()["error"]["message"]


# -- item 6: token ids as OpenAI's API allows them ----------------------------------------------

def _ids(artefact: Path, text: str) -> list[int]:
    return Tokenizer.from_file(str(artefact / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def test_token_ids_embed_like_the_text_they_encode(small: Served, library: Embedder, artefact: Path) -> None:
    texts = ["token ids in, vectors out", "a second text"]
    ids = [_ids(artefact, t) for t in texts]
    one = small.http.post("/v1/embeddings", json={"input": ids[0]})
    assert one.status_code == 200, one.text
    np.testing.assert_allclose(one.json()["data"][0]["embedding"], library.embed(texts[:1])[0], atol=1e-6)
    assert one.json()["usage"]["prompt_tokens"] == library.prepare(texts[:1])[0].length  # end-of-text added
    both = small.http.post("/v1/embeddings", json={"input": ids})
    got = np.array([d["embedding"] for d in both.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, library.embed(texts), atol=1e-6)


def test_token_ids_are_truncated_like_text(small: Served, library: Embedder, artefact: Path) -> None:
    long = "words and more words " * 60
    reply = small.http.post("/v1/embeddings", json={"input": _ids(artefact, long)})
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["data"][0]["embedding"], library.embed([long])[0], atol=1e-6)
    refused = small.http.post("/v1/embeddings", json={"input": [_ids(artefact, long)], "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input[0]"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": [[1, 2], [10**9]]}, "input[1]", "vocabulary"),
    ({"input": [-1]}, "input[0]", "vocabulary"),
    ({"input": [[]]}, "input[0]", "empty"),
    ({"input": [1, 2], "instruction": "a task"}, "instruction", "text only"),
], ids=["out-of-vocab", "negative", "empty", "with-instruction"])
def test_bad_token_ids_are_400(small: Served, body: dict, param: str, words: str) -> None:
    reply = small.http.post("/v1/embeddings", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"]
