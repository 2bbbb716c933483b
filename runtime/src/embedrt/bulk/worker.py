"""What embeds a corpus job's shards outside the process that reads the inputs: one ``Embedder`` loaded
once, handed one shard's ids and texts at a time, writing the shard into the output directory.

``ShardWriter`` runs inside a Ray actor (``ray/driver.py``: ``--ray``) or a worker process of this
machine (``devices.py``: ``--devices`` / ``--workers``). It embeds a shard window by window from the
shard's first row, exactly as the job does in one process (``embed_blocks``), and writes it atomically;
whoever drives it records it. A writer that cannot load the model says so, with its host's name and
its device, through ``describe`` instead of dying in its constructor.

Nothing here imports Ray.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BackendConfig
from ..embedder import Embedder
from ..errors import InvalidInputError
from ..streaming import WINDOW, embed_blocks
from .shardbook import describe
from .shards import write_shard


@dataclass(frozen=True)
class WorkerSpec:
    """How every worker loads and runs the model (pickled once per worker)."""

    artefact: str  # a path every worker can read (on a Ray cluster: every node), or a URL each fetches
    backend: str = "auto"
    precision: str = "auto"
    attention: str = "auto"
    threads: int = 0  # ONNX Runtime's intra-op threads; 0: its own choice
    prompt: str | None = "document"  # as ``embed_blocks`` takes it
    instruction: str | None = None
    dimensions: int | None = None
    window: int = WINDOW
    gpu: int | None = None  # this GPU (CUDA index) of the machine; None: as the backend picks (Ray: its own GPU)

    def load(self) -> Embedder:
        config = BackendConfig(attention=self.attention, intra_op_threads=self.threads,
                               device="auto" if self.gpu is None else "cuda", device_id=self.gpu or 0)
        return Embedder.load(self.artefact, self.backend, precision=self.precision, backend_config=config)

    def embed(self, embedder: Embedder, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors ``[n, d]`` in order and the tokens run, window by window as the local job embeds a shard."""
        blocks = list(embed_blocks(embedder, texts, prompt=self.prompt, instruction=self.instruction,
                                   dimensions=self.dimensions, window=self.window))
        if not blocks:
            return np.empty((0, self.dimensions or embedder.info().dimensions), dtype=np.float32), 0
        return np.concatenate([b.vectors for b in blocks]), sum(b.tokens for b in blocks)


class ShardWriter:
    """One model; each call embeds one shard's texts and writes it into ``output``."""

    def __init__(self, spec: WorkerSpec, output: str) -> None:
        self.spec, self.output = spec, Path(output)
        self.host = socket.gethostname() + ("" if spec.gpu is None else f", GPU {spec.gpu}")
        self.embedder: Embedder | None = None
        self.problem: str | None = None
        try:
            self.embedder = spec.load()
        except Exception as exc:  # reported by describe(), with where it happened
            self.problem = f"{type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        """``{"model": ...}`` as the run record keeps it, or ``{"error": ...}`` if the model did not load here."""
        if self.embedder is None:
            return {"error": f"on {self.host}: {self.problem}"}
        return {"model": describe(self.embedder, self.spec.dimensions)}

    def write(self, name: str, ids: list[Any], id_type: str, texts: list[str]) -> dict[str, Any]:
        """Embed and write shard ``name``; its ``bytes``, ``sha256``, ``tokens`` and ``rows``."""
        if self.embedder is None:
            raise InvalidInputError(f"on {self.host}: {self.problem}")
        if not self.output.is_dir():
            raise InvalidInputError(f"--output {self.output} does not exist on {self.host}: on a Ray cluster it must "
                                    "be a path every node can write (a shared file system)")
        vectors, tokens = self.spec.embed(self.embedder, texts)
        written = write_shard(self.output / name, ids, id_type, vectors)
        return {**written, "tokens": tokens, "rows": len(vectors)}

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()


__all__ = ["ShardWriter", "WorkerSpec"]
