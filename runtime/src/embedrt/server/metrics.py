"""Prometheus metrics, one registry per server instance (two servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class ServerMetrics:
    """Requests and errors by code, latency and queue time, batch shape, queue depth.

    The transports call ``request``; each served model's core reports through ``for_model(name)``
    (an ``embedrt.core.SchedulerMetrics``), so its queue and batches carry the label ``model``.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("embedrt_requests", "Requests answered, by transport and status code",
                                ("transport", "code"), registry=r)
        self.errors = Counter("embedrt_errors", "Requests that failed, by transport and status code",
                              ("transport", "code"), registry=r)
        self.latency = Histogram("embedrt_request_duration_seconds", "Time from arrival to answer",
                                 ("transport",), buckets=_LATENCY, registry=r)
        model = ("model",)
        self.queue_time = Histogram("embedrt_queue_time_seconds", "Time from admission to the start of its batch",
                                    model, buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("embedrt_batch_size", "Texts (or rerank pairs) per backend batch", model,
                                    buckets=_SIZES, registry=r)
        self.batch_requests = Histogram("embedrt_batch_requests", "Requests merged into one backend batch",
                                        model, buckets=_SIZES, registry=r)
        self.batch_tokens = Histogram("embedrt_batch_tokens", "Tokens per backend batch", model, buckets=_TOKENS,
                                      registry=r)
        self.batch_seconds = Histogram("embedrt_batch_duration_seconds", "Backend time per batch", model,
                                       buckets=_LATENCY, registry=r)
        self.queue_requests = Gauge("embedrt_queue_depth", "Requests admitted and not yet answered", model,
                                    registry=r)
        self.queue_tokens = Gauge("embedrt_queue_tokens", "Tokens waiting for the backend", model, registry=r)
        self.ready = Gauge("embedrt_ready", "1 once every model is loaded and warmed up, 0 while loading or draining",
                           registry=r)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    # -- transports -------------------------------------------------------------------------------

    def request(self, transport: str, code: str, seconds: float) -> None:
        self.requests.labels(transport, code).inc()
        if code != "OK":
            self.errors.labels(transport, code).inc()
        self.latency.labels(transport).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """``embedrt.core.SchedulerMetrics`` for one served model: the server's metrics, labelled with its name."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        m = metrics
        self._depth, self._tokens = m.queue_requests.labels(model), m.queue_tokens.labels(model)
        self._queued = m.queue_time.labels(model)
        self._batch = (m.batch_requests.labels(model), m.batch_size.labels(model), m.batch_tokens.labels(model),
                       m.batch_seconds.labels(model))

    def queue_depth(self, requests: int, tokens: int) -> None:
        self._depth.set(requests)
        self._tokens.set(tokens)

    def queued(self, seconds: float) -> None:
        self._queued.observe(seconds)

    def batch(self, requests: int, texts: int, tokens: int, seconds: float) -> None:
        for histogram, value in zip(self._batch, (requests, texts, tokens, seconds), strict=True):
            histogram.observe(value)


__all__ = ["ModelMetrics", "ServerMetrics"]
