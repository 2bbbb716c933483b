"""Choosing between the fused graph and its eager twin; the bound-buffer runner behind CUDA graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from runtime_helpers import TEXTS, min_cosine

from embedrt import Embedder
from embedrt.backends.base import Batch
from embedrt.backends.ort_cuda import CudaRunner, row_slot
from embedrt.batching import collate
from embedrt.config import BackendConfig
from embedrt.errors import ArtefactError, BackendError
from embedrt.manifest import load_manifest


def _load(artefact: Path, **config: object) -> Embedder:
    return Embedder.load(artefact, "onnxruntime", precision="fp32", backend_config=BackendConfig(**config))


def test_fused_and_eager_agree(qwen3_artefact: Path) -> None:
    with _load(qwen3_artefact) as fused, _load(qwen3_artefact, attention="eager") as eager:
        assert fused.info().backend.attention == "fused"
        assert eager.info().backend.attention == "eager"
        assert eager.info().backend.graph == "model.fp32.eager.onnx"
        assert min_cosine(fused.embed(TEXTS), eager.embed(TEXTS)) > 0.99999


def test_fused_falls_back_to_eager_twin(qwen3_artefact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "art"
    shutil.copytree(qwen3_artefact, broken)
    (broken / "model.fp32.onnx").write_bytes(b"not a graph this onnxruntime can load")
    with _load(broken) as embedder:  # auto: the twin takes over, and says why
        facts = embedder.info().backend
        assert facts.attention == "eager" and "model.fp32.onnx" in facts.notes["attention_fallback"]
        assert embedder.embed(["still works"]).shape == (1, 64)
    with pytest.raises(BackendError, match=r"could not load model\.fp32\.onnx"):
        _load(broken, attention="fused")


def test_padding_side_is_enforced(qwen3_artefact: Path, tmp_path: Path) -> None:
    art = tmp_path / "left"
    shutil.copytree(qwen3_artefact, art)
    data = json.loads((art / "manifest.json").read_text())
    data["padding_side"] = "left"
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match="exact only with right padding"):
        _load(art)
    with _load(art, attention="eager") as embedder:  # the eager twin takes a mask: any side works
        assert embedder.embed(["x"]).shape == (1, 64)


def test_manifest_without_fused_fields_reads_as_eager(qwen3_artefact: Path, tmp_path: Path) -> None:
    art = tmp_path / "old"
    shutil.copytree(qwen3_artefact, art)
    data = json.loads((art / "manifest.json").read_text())
    data.pop("eager_graphs")
    for graph in data["graphs"].values():
        for key in ("attention", "padding_side", "ops"):
            graph.pop(key)
    (art / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(art)
    assert m.graphs["fp32"].attention == "eager" and m.eager_graphs == {}
    assert m.graph("fp32", "eager") is m.graphs["fp32"]
    with pytest.raises(ArtefactError, match="--attention fused"):
        m.graph("fp32", "fused")


def test_row_slots() -> None:
    assert [row_slot(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


def _batches(artefact: Path, rows: int, sequence: int, seed: int) -> Batch:
    m = load_manifest(artefact)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, sequence + 1, size=rows)
    return collate([rng.integers(5, 1000, size=n) for n in lengths], sequence, m.pad_token_id, m.padding_side)


def test_bound_runner_matches_plain_runs(qwen3_artefact: Path) -> None:
    """The CUDA runner's fixed-buffer path, run on a CPU session: rows padded to a slot, pads dropped,
    one set of buffers per slot reused across calls, outputs of each call its own."""
    session = ort.InferenceSession(str(qwen3_artefact / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    m = load_manifest(qwen3_artefact)
    runner = CudaRunner(ort, session, m, 0, graphs=True, max_graph_tokens=8 * 32, device="cpu")
    for seed, (rows, sequence) in enumerate([(1, 16), (3, 16), (5, 32), (3, 16), (16, 64)]):
        batch = _batches(qwen3_artefact, rows, sequence, seed)
        want = session.run(["sentence_embedding", "embedding_norm"],
                           {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        got = runner.run(batch)
        assert list(got) == ["sentence_embedding", "embedding_norm"]
        assert got["sentence_embedding"].shape == (rows, m.hidden_size) and got["embedding_norm"].shape == (rows,)
        np.testing.assert_allclose(got["sentence_embedding"], want[0], atol=1e-5)
        np.testing.assert_allclose(got["embedding_norm"], want[1], rtol=1e-5)
    # 16 x 64 is past the capture limit: it ran unbound, and took no slot.
    assert runner.captured_shapes == [(1, 16), (4, 16), (8, 32)]


def test_bound_runner_feeds_the_manifests_inputs(cross_encoder_artefact: Path) -> None:
    """A graph that takes token type ids and outputs score / logit, through both of the runner's paths."""
    m = load_manifest(cross_encoder_artefact)
    session = ort.InferenceSession(str(cross_encoder_artefact / m.graphs["fp32"].file),
                                   providers=["CPUExecutionProvider"])
    runner = CudaRunner(ort, session, m, 0, graphs=True, max_graph_tokens=4 * 16, device="cpu")
    rng = np.random.default_rng(0)
    for rows, sequence in [(3, 16), (3, 32)]:  # captured, then past the capture limit
        lengths = rng.integers(2, sequence + 1, size=rows)
        ids = [rng.integers(5, 300, size=n) for n in lengths]
        types = [(np.arange(n) >= n // 2).astype(np.int64) for n in lengths]
        batch = collate(ids, sequence, m.pad_token_id, m.padding_side, types)
        want = session.run(["score", "logit"], batch.feed(m.input_names))
        got = runner.run(batch)
        assert list(got) == ["score", "logit"] and got["score"].shape == (rows,)
        np.testing.assert_allclose(got["score"], want[0], atol=1e-6)
        np.testing.assert_allclose(got["logit"], want[1], atol=1e-6)
        zero = runner.run(collate(ids, sequence, m.pad_token_id, m.padding_side))  # no type ids: zeros
        assert not np.allclose(zero["logit"], got["logit"])  # the type ids reached the graph
    assert runner.captured_shapes == [(4, 16)]
