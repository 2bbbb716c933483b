"""Fixtures: real servers on port 0 with the real models on tiny artefacts (embedders and rerankers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import MAX_INPUTS, MAX_MESSAGE_BYTES, Served, serve

from embedrt import Embedder, Reranker
from embedrt.config import SchedulerConfig, ServerConfig


@pytest.fixture(scope="session")
def artefact(qwen3_artefact: Path) -> Path:
    return qwen3_artefact


@pytest.fixture(scope="session")
def library(artefact: Path) -> Iterator[Embedder]:
    """The library itself: what both transports must agree with."""
    with Embedder.load(artefact) as embedder:
        yield embedder


@pytest.fixture(scope="module")
def served(artefact: Path) -> Iterator[Served]:
    """One shared server for tests that do not change its configuration or hooks."""
    instance = serve(artefact, scheduler=SchedulerConfig(max_inputs_per_request=8))
    yield instance
    instance.close()


def _export(source: Path, out: Path, **options: object) -> Path:
    from embedrt_export import ExportOptions, export_model

    export_model(str(source), out, ExportOptions(**options), log=lambda _: None)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def reranker_artefact(qwen3_reranker_artefact: Path) -> Path:
    """The tiny Qwen3-Reranker of tests/conftest.py (template pairs, an instruction)."""
    return qwen3_reranker_artefact


@pytest.fixture(scope="session")
def small_embedder_artefact(qwen3_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second embedder, of another name and width (32) than ``artefact``'s (64)."""
    return _export(qwen3_dirs["mha-h32-l1"], tmp_path_factory.mktemp("artefacts") / "tiny-qwen3-h32",
                   dtypes=("fp32",), max_length=128)


@pytest.fixture(scope="session")
def reranker(reranker_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(reranker_artefact, "onnxruntime", precision="fp32") as model:
        yield model


@pytest.fixture(scope="session")
def cross_encoder(cross_encoder_artefact: Path) -> Iterator[Reranker]:
    with Reranker.load(cross_encoder_artefact, "onnxruntime", precision="fp32") as model:
        yield model


@pytest.fixture(scope="session")
def small_embedder(small_embedder_artefact: Path) -> Iterator[Embedder]:
    with Embedder.load(small_embedder_artefact, "onnxruntime", precision="fp32") as model:
        yield model


@pytest.fixture(scope="session")
def mixed(artefact: Path, reranker_artefact: Path) -> Iterator[Served]:
    """An embedder and a reranker in one server: one model per task, so any `model` name is accepted.
    A short batching wait lets concurrent requests meet."""
    config = ServerConfig(grpc_port=0, http_port=0, grace_s=5.0, max_message_bytes=MAX_MESSAGE_BYTES)
    instance = serve([artefact, reranker_artefact], config,
                     SchedulerConfig(max_inputs_per_request=MAX_INPUTS, max_wait_us=5_000))
    yield instance
    instance.close()


@pytest.fixture(scope="session")
def multi(artefact: Path, small_embedder_artefact: Path, reranker_artefact: Path,
          cross_encoder_artefact: Path) -> Iterator[Served]:
    """Two embedders and two rerankers in one server: requests must name their model."""
    instance = serve([artefact, small_embedder_artefact, reranker_artefact, cross_encoder_artefact],
                     scheduler=SchedulerConfig(max_inputs_per_request=MAX_INPUTS))
    yield instance
    instance.close()
