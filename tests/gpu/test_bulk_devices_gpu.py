"""``embedrt embed --output DIR/ --devices``: worker processes on GPUs (ONNX Runtime CUDA).

Marker ``gpu``: skipped, with the reason printed, where there is no NVIDIA GPU or the installed
onnxruntime has no CUDA provider (the CPU wheel; CI). One GPU is enough: ``--devices 0,0`` puts two
workers on it, which takes the same path as two GPUs but for the index.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedrt import Embedder
from embedrt.bulk import RECORD, BulkOptions, run
from embedrt.config import BackendConfig

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("ort_cuda")]

TEXTS = [f"passage {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 9) for i in range(600)]


def _job(artefact: Path, src: Path, out: Path, devices: tuple[int, ...]) -> dict:
    started = time.perf_counter()
    run(BulkOptions(artefact=artefact, inputs=(str(src),), output=out, backend="onnxruntime", precision="fp32",
                    shard_size=100, progress=False, devices=devices))
    record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    print(f"--devices {','.join(map(str, devices))}: {time.perf_counter() - started:.1f} s, model {record['model']}")
    return record  # type: ignore[no-any-return]


def test_devices_embed_on_the_gpu_and_equal_one_worker(qwen3_artefact: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    one = _job(qwen3_artefact, src, tmp_path / "one", (0,))
    two = _job(qwen3_artefact, src, tmp_path / "two", (0, 0))
    assert one["model"]["device"] == "cuda" and two["model"] == one["model"]
    a, b = pq.read_table(tmp_path / "one"), pq.read_table(tmp_path / "two")
    assert a.column("id").to_pylist() == b.column("id").to_pylist() == list(range(len(TEXTS)))
    va = np.asarray(a.column("embedding").to_pylist(), dtype=np.float32)
    vb = np.asarray(b.column("embedding").to_pylist(), dtype=np.float32)
    same = [x["sha256"] == y["sha256"] for x, y in zip(one["shards"], two["shards"], strict=True)]
    print(f"shards byte-identical between 1 and 2 workers: {sum(same)} of {len(same)}")
    np.testing.assert_allclose(va, vb, atol=1e-6)  # the same graph on the same GPU and shapes
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32",
                       backend_config=BackendConfig(device="cpu")) as cpu:
        cos = np.einsum("ij,ij->i", va, cpu.embed_documents(TEXTS))
    assert cos.min() >= 0.99999, cos.min()
