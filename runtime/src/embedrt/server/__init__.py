"""The serving layer (extra ``embedrt[server]``): gRPC and HTTP (OpenAI, Cohere, TEI) in front of the core.

Nothing here is imported by ``import embedrt``; grpc, FastAPI and prometheus_client are needed only
to serve. Layers: transport (``grpc_service``, ``http_app``) -> core (``embedrt.core.Scheduler``) ->
model (``embedrt.Embedder``, ``embedrt.Reranker``: several side by side, picked by name).
"""

from __future__ import annotations

from .grpc_service import create_server
from .http_app import create_app, create_http_server
from .metrics import ServerMetrics
from .service import EmbeddingServer, Ports, ThreadedServer, serve_until_signal
from .state import ServingState
from .stubs import RERANKER_SERVICE_NAME, SERVICE_NAME, pb2, pb2_grpc

__all__ = [
    "RERANKER_SERVICE_NAME",
    "SERVICE_NAME",
    "EmbeddingServer",
    "Ports",
    "ServerMetrics",
    "ServingState",
    "ThreadedServer",
    "create_app",
    "create_http_server",
    "create_server",
    "pb2",
    "pb2_grpc",
    "serve_until_signal",
]
