"""Optional TLS, message-size limits, and the serving stack staying out of `import embedrt`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from _serving import EPHEMERAL, serve

from embedrt.server import pb2, pb2_grpc


def test_import_embedrt_does_not_import_the_server_stack() -> None:
    code = ("import sys, embedrt, embedrt.core; "
            "bad = [m for m in ('grpc', 'fastapi', 'uvicorn', 'prometheus_client', 'torch', 'transformers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_message_size_limit_on_both_transports(artefact: Path) -> None:
    served = serve(artefact, replace(EPHEMERAL, max_message_bytes=2000))
    try:
        with pytest.raises(grpc.RpcError) as info:
            served.embed(["x" * 3000])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = served.http.post("/v1/embeddings", json={"input": "x" * 3000, "model": "m"})
        assert reply.status_code == 413 and "--max-message-bytes" in reply.json()["error"]["message"]
        assert served.embed(["small"]).shape == (1, 64)
    finally:
        served.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls(artefact: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    served = serve(artefact, replace(EPHEMERAL, tls_cert=str(cert), tls_key=str(key), http_port=None))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{served.server.ports.grpc}", credentials) as channel:
            reply = pb2_grpc.EmbedderStub(channel).Embed(pb2.EmbedRequest(inputs=["over TLS"]), timeout=30)
        assert len(reply.embeddings[0].values) == 64
        with pytest.raises(grpc.RpcError):  # plaintext is refused
            served.embed(["in the clear"])
    finally:
        served.close()
