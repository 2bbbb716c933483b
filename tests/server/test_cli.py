"""`embedrt serve` as users run it: flags and EMBEDRT_* variables, and SIGTERM draining a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedrt import Embedder
from embedrt.cli import build_parser
from embedrt.cli.serve import OPTIONS, settings_from
from embedrt.config import RayServeConfig
from embedrt.server import pb2, pb2_grpc


def _settings(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_flags_and_environment_map_onto_the_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(["art", "--max-batch-tokens", "4096", "--http-port", "0"],
                  {"EMBEDRT_MAX_QUEUE": "7", "EMBEDRT_MAX_BATCH_TOKENS": "999", "EMBEDRT_HOST": "0.0.0.0",
                   "EMBEDRT_REFLECTION": "false", "EMBEDRT_MAX_WAIT_US": "150"}, monkeypatch)
    assert s.artefact == "art"
    assert s.scheduler.max_batch_tokens == 4096 and s.batching.max_batch_tokens == 4096  # the flag wins
    assert s.scheduler.max_queued_requests == 7 and s.scheduler.max_wait_us == 150
    assert s.server.host == "0.0.0.0" and s.server.reflection is False
    assert s.server.http_port is None  # --http-port 0 turns HTTP off
    assert s.backend.cuda_graphs is False
    assert _settings(["art", "--cuda-graphs", "true"], {}, monkeypatch).backend.cuda_graphs is True
    assert _settings(["art"], {"EMBEDRT_CUDA_GRAPHS": "true"}, monkeypatch).backend.cuda_graphs is True
    defaults = _settings([], {"EMBEDRT_ARTEFACT": "from-env"}, monkeypatch)
    assert defaults.artefact == "from-env"
    assert (defaults.server.host, defaults.server.grpc_port, defaults.server.http_port) == ("127.0.0.1", 50051, 8080)


# A valid value unlike the default for every option (a new option must add one here).
_SAMPLES = {"--host": "0.0.0.0", "--grpc-port": "6001", "--http-port": "6002", "--tls-cert": "c.pem",
            "--tls-key": "k.pem", "--max-message-bytes": "1234567", "--body-timeout": "7.5", "--grace": "3.5",
            "--reflection": "false", "--warmup": "false", "--backend": "onnxruntime", "--precision": "fp16",
            "--device": "cpu", "--device-id": "1", "--intra-op-threads": "3", "--cuda-graphs": "true",
            "--cuda-graph-max-tokens": "2048", "--attention": "eager", "--max-batch-tokens": "3000",
            "--max-batch-size": "17", "--max-batch-requests": "5", "--max-wait-us": "123", "--max-queue": "77",
            "--max-queue-tokens": "99999", "--max-inputs": "33", "--tokenizer-threads": "3", "--ray": "auto",
            "--replicas": "auto", "--min-replicas": "2", "--max-replicas": "6", "--target-ongoing-requests": "8",
            "--max-ongoing-requests": "32", "--cpus-per-replica": "2", "--gpus-per-replica": "0.5"}
_RAY_FLAGS = ("--replicas", "--min-replicas", "--max-replicas", "--target-ongoing-requests", "--max-ongoing-requests",
              "--cpus-per-replica", "--gpus-per-replica")
_NEEDS = {"--tls-cert": ["--tls-key", "k.pem"], "--tls-key": ["--tls-cert", "c.pem"],  # valid only in pairs
          **{flag: ["--ray"] for flag in _RAY_FLAGS}}  # valid only on Ray


def _target(settings, target: str):  # type: ignore[no-untyped-def]
    section, name = target.split(".")
    if section == "ray":
        return getattr(settings.ray or RayServeConfig(), name)  # None: not on Ray, the defaults
    return settings.load[name] if section == "load" else getattr(getattr(settings, section), name)


def test_every_variable_sets_what_its_flag_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each EMBEDRT_* variable alone reaches every configuration field of its flag, with the flag's value."""
    assert sorted(_SAMPLES) == sorted(o.flag for o in OPTIONS), "give each option a sample value above"
    defaults = _settings(["art"], {}, monkeypatch)
    for option in OPTIONS:
        value, base = _SAMPLES[option.flag], ["art", *_NEEDS.get(option.flag, [])]
        by_variable = _settings(base, {option.env: value}, monkeypatch)
        by_flag = _settings([*base, f"{option.flag}={value}"], {}, monkeypatch)
        assert by_variable == by_flag, option.flag
        for target in option.targets:
            assert _target(by_variable, target) == option.to_config(option.type(value)), (option.env, target)
            assert _target(by_variable, target) != _target(defaults, target), f"{option.flag}: pick another sample"


def test_sigterm_drains_in_flight_requests(artefact: Path, library: Embedder) -> None:
    # A long batching wait keeps admitted requests queued inside the server when SIGTERM arrives.
    command = [sys.executable, "-m", "embedrt.cli", "serve", str(artefact), "--grpc-port", "0", "--http-port", "0",
               "--max-wait-us", "400000", "--grace", "20"]
    env = {**os.environ, "EMBEDRT_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        deadline = time.monotonic() + 60
        assert process.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            found = re.search(r"ready: .* gRPC 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "the server never reported ready"
        texts = [f"in flight {i}" for i in range(16)]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.EmbedderStub(channel)
            futures = [stub.Embed.future(pb2.EmbedRequest(inputs=[t]), timeout=30) for t in texts]
            time.sleep(0.15)  # admitted, and waiting for company
            process.send_signal(signal.SIGTERM)
            replies = [f.result() for f in futures]
        got = np.array([r.embeddings[0].values for r in replies], dtype=np.float32)
        np.testing.assert_allclose(got, library.embed(texts), atol=1e-6)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
