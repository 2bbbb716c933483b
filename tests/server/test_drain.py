"""Draining is bounded by the grace period, and what it cuts off ends UNAVAILABLE (issue 13, item 8)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
from _serving import EPHEMERAL, Hooks, serve

from embedrt.server import pb2


def test_a_hung_backend_call_cannot_hold_the_drain_past_the_grace(artefact: Path) -> None:
    hooks = Hooks()
    served = serve(artefact, replace(EPHEMERAL, grace_s=1.0), hooks=hooks)
    try:
        hooks.gate.clear()  # the next backend call hangs (until the gate opens, 30 s)
        call = served.stub.Embed.future(pb2.EmbedRequest(inputs=["caught in the drain"]), timeout=30)
        http_reply: list[httpx.Response] = []
        poster = threading.Thread(target=lambda: http_reply.append(
            served.http.post("/v1/embeddings", json={"input": "caught too"})))
        assert hooks.entered.wait(10)
        poster.start()
        time.sleep(0.2)  # the HTTP request is admitted and queued behind the hung batch
        started = time.monotonic()
        drained = served.server.stop(grace=1.0, timeout=30)
        took = time.monotonic() - started
        assert not drained and took < 1.0 + 3.0, f"stop took {took:.1f}s with a 1 s grace"
        try:
            call.result(5)
            raise AssertionError("the request could not have been answered")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        poster.join(5)
        assert http_reply and http_reply[0].status_code == 503
        assert http_reply[0].json()["error"]["code"] == "UNAVAILABLE"
    finally:
        hooks.gate.set()
        served.channel.close()
        served.http.close()
