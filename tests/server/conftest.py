"""Fixtures: real servers on port 0 with the real Embedder on the tiny Qwen3 artefact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import Served, serve

from embedrt import Embedder
from embedrt.config import SchedulerConfig


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
