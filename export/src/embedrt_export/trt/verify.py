"""Engine vs ONNX Runtime FP32 on the fixed parity texts, on the GPU the engine was built for.

Every text runs alone, and all texts together through the runtime's own batcher (sorted, bucketed,
padded on the manifest's side, split by the engine's profiles), exactly as serving will run them.
Each result is compared with ONNX Runtime's FP32 vector of that text alone. A reranker's engine is
checked the same way on the export's parity pairs, by the largest absolute score difference; an FP16
one against the closer of the FP32 and the FP16 graph (as the export gates FP16 graphs: FP16 weights
alone can move a wide reranker's scores by the whole budget).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embedrt.config import BackendConfig, BatchingConfig
from embedrt.engines import EngineRecord
from embedrt.manifest import Manifest

from ..errors import ParityError
from ..export.parity import long_text, parity_texts

# Per engine precision: which statistic of the cosines to ORT FP32 is gated, and its threshold.
ENGINE_TOLERANCE: dict[str, tuple[str, float]] = {
    "fp32": ("min_cosine", 0.9999),  # TF32 stays off; only kernel summation order differs
    "fp16": ("min_cosine", 0.999),
    "int8": ("mean_cosine", 0.99),  # quantization moves every vector a little; the mean is the promise
}
# Rerankers: the largest |score - ORT score| over the parity pairs, against the closest of the references
# (ORT FP32; an FP16 engine also the FP16 graph, an INT8 engine the INT8 Q/DQ graph it was built from:
# quantization moves a wide reranker's scores by far more than kernel differences, so INT8 is checked
# against the graph whose ranking quality `embedrt quantize` gated). The INT8 figure is provisional:
# no INT8 reranker engine has run on a GPU here yet.
RERANK_ENGINE_TOLERANCE: dict[str, float] = {"fp32": 5e-4, "fp16": 2e-3, "int8": 2e-2}


def _query(manifest: Manifest) -> Callable[[str], str]:
    prompts = manifest.prompts
    if prompts.takes_instruction and not prompts.default_instruction:
        return lambda text: text  # the template needs an instruction and has none to default to: as is
    return prompts.format_query


Item = tuple[np.ndarray, np.ndarray | None]  # token ids, and token type ids where the graph takes them


def _batches(backend: Any, items: list[Item], manifest: Manifest, batched: bool) -> Iterator[tuple[list[int], Any]]:
    """(indices, Batch): alone, no padding at all; batched, as the runtime's batcher pads and splits."""
    from embedrt.batching import collate, plan

    groups = (plan([len(ids) for ids, _ in items], BatchingConfig(), backend.limits()) if batched
              else [_Single(i, len(items[i][0])) for i in range(len(items))])
    for group in groups:
        chosen = [items[i] for i in group.indices]
        types = [t for _, t in chosen] if all(t is not None for _, t in chosen) else None
        yield list(group.indices), collate([ids for ids, _ in chosen], group.sequence, manifest.pad_token_id,
                                           manifest.padding_side, types)  # type: ignore[arg-type]


def _embed(backend: Any, items: list[Item], manifest: Manifest, batched: bool) -> np.ndarray:
    out = np.empty((len(items), manifest.hidden_size), dtype=np.float32)
    for indices, batch in _batches(backend, items, manifest, batched):
        out[indices] = backend.run(batch)["sentence_embedding"]
    return out


class _Graph:
    """One graph file of the artefact on ONNX Runtime CPU, run as a backend runs a batch: the exact graph,
    where ``BackendConfig(precision=...)`` on a CPU would pick another ("int8" -> "int8-cpu")."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.manifest = manifest

    def limits(self) -> Any:  # only single, unpadded items are run through it
        raise NotImplementedError

    def run(self, batch: Any) -> dict[str, np.ndarray]:
        names = list(self.manifest.output_names)
        return dict(zip(names, self.session.run(names, batch.feed(self.manifest.input_names)), strict=True))


class _Single:
    def __init__(self, index: int, sequence: int) -> None:
        self.indices, self.sequence = (index,), sequence


def verify_plan(artefact: Path, manifest: Manifest, trt: Any, record: EngineRecord, plan: bytes | memoryview,
                log: Callable[[str], None]) -> dict[str, Any]:
    from embedrt.backends.tensorrt import TensorRTBackend
    from embedrt.backends.trt_loader import given_plan

    engine = TensorRTBackend(artefact, manifest, BackendConfig(precision=record.key.precision, device="cuda"),
                             loader=given_plan(trt, record, plan))
    return compare_backend(artefact, manifest, record.key.precision, engine, log)


def compare_backend(artefact: Path, manifest: Manifest, precision: str, engine: Any,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """``engine`` (a Backend, not yet open; closed here) against ONNX Runtime FP32 on the CPU."""
    from embedrt.backends.onnxruntime import OnnxRuntimeBackend

    rerank = manifest.task == "rerank"
    items, labels = _rerank_items(artefact, manifest) if rerank else _text_items(artefact, manifest)
    run = _scores if rerank else _embed
    ref_precision = "fp32" if "fp32" in manifest.graphs else precision
    with OnnxRuntimeBackend(artefact, manifest, BackendConfig(precision=ref_precision, device="cpu")) as ort:
        reference = run(ort, items, manifest, batched=False)
    references = {ref_precision: reference}
    if rerank and precision in ("fp16", "int8") and ref_precision == "fp32" and precision in manifest.graphs:
        # As at export: the FP16 weights alone can move a wide reranker's scores by the whole budget,
        # so an FP16 engine may match the artefact's FP16 graph (which passed the export's gate) instead;
        # an INT8 engine is compared with the Q/DQ graph it was built from (not "int8-cpu").
        references[precision] = _scores(_Graph(artefact / manifest.graph(precision).file, manifest), items,
                                        manifest, batched=False)
    try:
        engine.open()
        modes = {"single": run(engine, items, manifest, batched=False),
                 "batched": run(engine, items, manifest, batched=True)}
        gpu = engine.describe().gpu or "?"
    finally:
        engine.close()
    if rerank:
        return _score_report(precision, gpu, labels, references, modes, log)
    texts = labels
    cosines = np.stack([np.einsum("ij,ij->i", vectors, reference) for vectors in modes.values()])
    mode_i, text_i = np.unravel_index(np.argmin(cosines), cosines.shape)
    metric, threshold = ENGINE_TOLERANCE[precision]
    report = {
        "precision": precision,
        "reference": f"onnxruntime-{ref_precision}-cpu",
        "gpu": gpu,
        "texts": len(texts),
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
        "per_mode_min_cosine": {m: float(c.min()) for m, c in zip(modes, cosines, strict=True)},
        "worst_text_index": int(text_i),
        "worst_text": texts[int(text_i)][:80],
        "worst_mode": list(modes)[int(mode_i)],
        "gated_on": metric,
        "threshold": threshold,
    }
    report["passed"] = bool(float(cosines.min() if metric == "min_cosine" else cosines.mean()) >= threshold)
    log(f"  parity vs {report['reference']}: min cosine {report['min_cosine']:.6f}, mean "
        f"{report['mean_cosine']:.6f} ({metric} >= {threshold}: {'pass' if report['passed'] else 'FAIL'})")
    return report


def check(report: dict[str, Any]) -> None:
    if not report["passed"]:
        gated = report["gated_on"]
        relation, what = (">", "pair") if gated == "max_abs_score_diff" else ("<", "text")
        raise ParityError(
            f"{report['precision']} engine fails parity, so it was not installed: {gated} {report[gated]:.6f} "
            f"{relation} {report['threshold']} (worst: {what} {report[f'worst_{what}_index']} "
            f"{report[f'worst_{what}']!r}, {report['worst_mode']})",
            report,
        )


def _text_items(artefact: Path, manifest: Manifest) -> tuple[list[Item], list[str]]:
    from embedrt.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(artefact, manifest)
    texts = parity_texts(_query(manifest))
    texts.append(long_text(tokenizer.count_tokens, manifest.max_length))
    return [(e.ids, None) for e in tokenizer.encode(texts, truncate=True)], texts


def _rerank_items(artefact: Path, manifest: Manifest) -> tuple[list[Item], list[str]]:
    """The export's parity pairs, tokenized as the export's gate tokenized them (``PairEncoder``)."""
    from ..export.rerank_parity import parity_pairs
    from ..export.rerank_reference import PairEncoder

    assert manifest.rerank is not None
    types = "token_type_ids" in manifest.input_names
    encoder = PairEncoder(artefact / "tokenizer.json", manifest.rerank.prompt, manifest.max_length,
                          manifest.pad_token_id, types)
    pairs, _ = parity_pairs(encoder.count, manifest.max_length, manifest.rerank.prompt.takes_instruction)
    items = []
    for pair in pairs:
        ids, type_ids = encoder.encode(pair)
        items.append((np.asarray(ids, np.int64), np.asarray(type_ids, np.int64) if types else None))
    return items, [f"{p.query[:40]} | {p.document[:40]}" for p in pairs]


def _scores(backend: Any, items: list[Item], manifest: Manifest, batched: bool) -> np.ndarray:
    out = np.empty(len(items), dtype=np.float32)
    for indices, batch in _batches(backend, items, manifest, batched):
        out[indices] = backend.run(batch)["score"]
    return out


def _score_report(precision: str, gpu: str, pairs: list[str], references: dict[str, np.ndarray],
                  modes: dict[str, np.ndarray], log: Callable[[str], None]) -> dict[str, Any]:
    """Gated against the closest of ``references`` (ORT CPU on the artefact's graphs, by precision)."""
    from ..export.rerank_parity import closest_reference

    got = np.stack(list(modes.values()))
    ref_precision, worst = closest_reference(got, references)
    label = {name: f"onnxruntime-{'int8-qdq' if name == 'int8' else name}-cpu" for name in references}
    diffs = np.abs(got - references[ref_precision][None, :])
    mode_i, pair_i = (int(i) for i in np.unravel_index(np.argmax(diffs), diffs.shape))
    threshold = RERANK_ENGINE_TOLERANCE[precision]
    report = {
        "precision": precision,
        "reference": label[ref_precision],
        "gpu": gpu,
        "pairs": len(pairs),
        "max_abs_score_diff": float(diffs.max()),
        "mean_abs_score_diff": float(diffs.mean()),
        "per_mode_max_abs_score_diff": {m: float(d.max()) for m, d in zip(modes, diffs, strict=True)},
        "worst_pair_index": pair_i,
        "worst_pair": pairs[pair_i],
        "worst_mode": list(modes)[mode_i],
        "gated_on": "max_abs_score_diff",
        "threshold": threshold,
        "passed": bool(diffs.max() <= threshold),
        "max_abs_score_diff_by_reference": {label[name]: d for name, d in worst.items()},
    }
    log(f"  parity vs {report['reference']}: max |Δscore| {report['max_abs_score_diff']:.2e} "
        f"(<= {threshold}: {'pass' if report['passed'] else 'FAIL'})")
    return report


__all__ = ["ENGINE_TOLERANCE", "RERANK_ENGINE_TOLERANCE", "check", "compare_backend", "verify_plan"]
