"""Python stubs for ``proto/embedrt/v1/embedding.proto``: committed, generated, never edited by hand.

They live in ``_generated`` and are made by ``scripts/generate_stubs.py`` at development time (a
test checks that they match the .proto), so a server needs no grpcio-tools and never writes into
its own install.

    from embedrt.server.stubs import pb2, pb2_grpc
"""

from __future__ import annotations

from ._generated import embedding_pb2 as pb2
from ._generated import embedding_pb2_grpc as pb2_grpc

SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
RERANKER_SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["Reranker"].full_name

__all__ = ["RERANKER_SERVICE_NAME", "SERVICE_NAME", "pb2", "pb2_grpc"]
