"""Configuration: one frozen dataclass per layer. The CLI and environment map onto these in one place."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, InvalidInputError

# Sequence-length buckets shared by the batcher and TensorRT optimisation profiles: padding a batch
# up to one of these keeps the number of distinct shapes (profiles, CUDA graphs) small.
DEFAULT_SEQUENCE_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers).

    ONNX Runtime's default counts the host's physical cores, so a container limited to 2 CPUs on a
    64-core host would start 64 threads per session and stall them against its quota.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))  # ceil: 1.5 CPUs -> 2 threads
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_intra_op_threads() -> int:
    """``EMBEDRT_INTRA_OP_THREADS`` if set, else :func:`usable_cpus`.

    Several embedders or server workers on one machine should split the CPUs between them (e.g. four
    workers on 8 CPUs: ``EMBEDRT_INTRA_OP_THREADS=2``): a session per worker each taking every core
    puts several threads on every CPU.
    """
    value = os.environ.get("EMBEDRT_INTRA_OP_THREADS", "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise InvalidInputError(f"EMBEDRT_INTRA_OP_THREADS must be a whole number (got {value!r})") from None
        if threads < 0:
            raise InvalidInputError(f"EMBEDRT_INTRA_OP_THREADS must be 0 (ONNX Runtime's choice) or more "
                                    f"(got {threads})")
        return threads
    return usable_cpus()


def _at_least(section: str, owner: object, minimum: float, *names: str) -> None:
    """ConfigError naming ``section.name`` for the first field below ``minimum`` (or not a finite number)."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{section}.{name}", f"must be a number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{section}.{name}", f"must be at least {minimum:g}, got {value:g}")


def _port(section: str, name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{section}.{name}", f"must be a port number from 0 to 65535, got {value}")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_tokens: int = 16384  # padded tokens per micro-batch (rows x bucketed length)
    max_batch_size: int = 64  # rows per micro-batch
    sequence_buckets: tuple[int, ...] = DEFAULT_SEQUENCE_BUCKETS

    def __post_init__(self) -> None:
        _at_least("batching", self, 1, "max_batch_tokens", "max_batch_size")


@dataclass(frozen=True)
class BackendConfig:
    precision: str = "auto"  # auto | fp32 | fp16 | int8
    device: str = "auto"  # auto | cpu | cuda
    device_id: int = 0
    # CPU threads of one backend session; 0: ONNX Runtime's own choice (every physical core of the host).
    # A plain default, read once at import (the CLI lists dataclass defaults; `serve` maps the same
    # EMBEDRT_INTRA_OP_THREADS variable onto this field itself).
    intra_op_threads: int = default_intra_op_threads()
    inter_op_threads: int = 1
    # Capture each input shape into a CUDA graph on first use and replay it afterwards: TensorRT-RTX's
    # whole-graph capture, or ONNX Runtime CUDA's enable_cuda_graph for short shapes (ort_cuda.py).
    # Off by default until a GPU measurement shows the gain (docs/tensorrt.md, docs/benchmarks.md).
    cuda_graphs: bool = False
    # ONNX Runtime CUDA: capture only shapes of at most this many padded tokens (rows x sequence),
    # where kernel launches dominate; longer batches run uncaptured.
    cuda_graph_max_tokens: int = 4096
    # Which form of the graph to run: "auto" (the artefact's default: fused attention where exported),
    # "fused", or "eager" (the twin with plain MatMul / Softmax attention, where the artefact has one).
    attention: str = "auto"

    def __post_init__(self) -> None:
        _at_least("backend", self, 0, "device_id", "intra_op_threads", "inter_op_threads")
        _at_least("backend", self, 1, "cuda_graph_max_tokens")


@dataclass(frozen=True)
class SchedulerConfig:
    """Cross-request batching and admission control (``embedrt.core.Scheduler``)."""

    max_batch_tokens: int = 16384  # real tokens merged into one ``Embedder.infer`` call
    max_batch_requests: int = 256  # requests merged into one call; 1 turns dynamic batching off
    max_wait_us: int = 2000  # how long the oldest queued request may wait for others to join it
    max_queued_requests: int = 512  # admitted and not yet answered; past it: OverloadedError at once
    max_queued_tokens: int = 1_048_576  # tokens waiting for the backend; past it: OverloadedError
    max_inputs_per_request: int = 512
    tokenizer_threads: int = 2  # tokenizing runs here, never on an event loop or the backend thread

    def __post_init__(self) -> None:
        _at_least("scheduler", self, 1, "max_batch_tokens", "max_batch_requests", "max_queued_requests",
                  "max_queued_tokens", "max_inputs_per_request", "tokenizer_threads")
        _at_least("scheduler", self, 0, "max_wait_us")


@dataclass(frozen=True)
class ServerConfig:
    """Transports (``embedrt.server``): where to listen and how to stop."""

    host: str = "127.0.0.1"  # loopback unless asked: exposing a model is a decision
    grpc_port: int = 50051  # 0: any free port
    http_port: int | None = 8080  # None: no HTTP endpoint; 0: any free port
    tls_cert: str | None = None  # PEM files; both or neither (gRPC only)
    tls_key: str | None = None
    max_message_bytes: int = 32 * 1024 * 1024  # per request, both transports
    body_timeout_s: float = 30.0  # HTTP: the whole request body must arrive within this; 0: no limit
    grace_s: float = 30.0  # drain: how long admitted work may take to finish after SIGTERM
    reflection: bool = True
    warmup: bool = True  # run one batch before reporting SERVING

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("server.host", "must be an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        _port("server", "grpc_port", self.grpc_port)
        _port("server", "http_port", self.http_port)
        if self.grpc_port and self.grpc_port == self.http_port:
            raise ConfigError("server.http_port", f"{self.http_port} is also the gRPC port; give each its own")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "server.tls_key" if self.tls_cert else "server.tls_cert"
            raise ConfigError(missing, "TLS needs both a certificate and its private key")
        _at_least("server", self, 1, "max_message_bytes")
        _at_least("server", self, 0, "body_timeout_s", "grace_s")


@dataclass(frozen=True)
class RayServeConfig:
    """Replicas on Ray Serve (``embedrt serve --ray``, ``embedrt.server.ray_serve.build_app``): per model."""

    # ray.init's address: None finds a cluster (RAY_ADDRESS, then the one started last on this machine) or
    # starts a local one; "auto" only connects; "HOST:6379" or "ray://HOST:10001" a given cluster.
    address: str | None = None
    replicas: int | str = 1  # replicas of each model, or "auto": between min and max on ongoing requests
    min_replicas: int = 1  # "auto" only
    max_replicas: int = 4  # "auto" only
    # "auto" adds replicas while the average replica has more requests in flight than this. Batching
    # needs company, so well above Serve's default of 2.
    target_ongoing_requests: float = 16.0
    max_ongoing_requests: int = 64  # requests Serve hands one replica at once; more wait in Serve's router
    cpus_per_replica: float = 1.0  # Ray's num_cpus; also the replica's ONNX Runtime threads unless set
    gpus_per_replica: float = 0.0  # Ray's num_gpus: 0.5 puts two replicas on one GPU; 0: CPU replicas
    # Serve's gRPC proxy port; None: no gRPC. Off unless asked: the proxy listens on every interface
    # whatever --host says, and this project exposes nothing by default.
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        if self.replicas != "auto" and (isinstance(self.replicas, bool) or not isinstance(self.replicas, int)):
            raise ConfigError("ray.replicas", f"must be a number of replicas or auto, got {self.replicas!r}")
        _at_least("ray", self, 1, *(() if self.replicas == "auto" else ("replicas",)), "min_replicas",
                  "max_replicas", "max_ongoing_requests")
        _at_least("ray", self, 0, "cpus_per_replica", "gpus_per_replica")
        if self.target_ongoing_requests <= 0 or not math.isfinite(self.target_ongoing_requests):
            raise ConfigError("ray.target_ongoing_requests", f"must be above 0, got {self.target_ongoing_requests}")
        if self.max_replicas < self.min_replicas:
            raise ConfigError("ray.max_replicas", f"must be at least --min-replicas ({self.min_replicas}), "
                              f"got {self.max_replicas}")
        _port("ray", "grpc_port", self.grpc_port)
        if self.grpc_port == 0:
            raise ConfigError("ray.grpc_port", "Serve's gRPC proxy needs a fixed port (every node's proxy listens "
                              "on it), not 0")
        if self.gpus_per_replica > 1 and not float(self.gpus_per_replica).is_integer():
            raise ConfigError("ray.gpus_per_replica", "above 1 must be a whole number of GPUs (Ray's rule), "
                              f"got {self.gpus_per_replica:g}")

    @property
    def autoscaling(self) -> bool:
        return self.replicas == "auto"

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.autoscaling else int(self.replicas)

    @property
    def threads(self) -> int:
        """ONNX Runtime threads for a replica that was given no --intra-op-threads: its CPUs, at least 1."""
        return max(1, math.ceil(self.cpus_per_replica))
