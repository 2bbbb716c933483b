"""Engine vs ONNX Runtime FP32 on the fixed parity texts, on the GPU the engine was built for.

Every text runs alone, and all texts together through the runtime's own batcher (sorted, bucketed,
padded on the manifest's side, split by the engine's profiles), exactly as serving will run them.
Each result is compared with ONNX Runtime's FP32 vector of that text alone.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _query(manifest: Manifest) -> Callable[[str], str]:
    prompts = manifest.prompts
    if prompts.takes_instruction and not prompts.default_instruction:
        return lambda text: text  # the template needs an instruction and has none to default to: as is
    return prompts.format_query


def _embed(backend: Any, items: list[np.ndarray], manifest: Manifest, batched: bool) -> np.ndarray:
    from embedrt.batching import collate, plan

    out = np.empty((len(items), manifest.hidden_size), dtype=np.float32)
    groups = (plan([len(i) for i in items], BatchingConfig(), backend.limits()) if batched
              else [_Single(i, len(items[i])) for i in range(len(items))])
    for group in groups:  # alone: no padding at all; batched: padded to the batcher's bucket
        batch = collate([items[i] for i in group.indices], group.sequence, manifest.pad_token_id,
                        manifest.padding_side)
        out[list(group.indices)] = backend.run(batch)["sentence_embedding"]
    return out


class _Single:
    def __init__(self, index: int, sequence: int) -> None:
        self.indices, self.sequence = (index,), sequence


def verify_plan(artefact: Path, manifest: Manifest, trt: Any, record: EngineRecord, plan: bytes | memoryview,
                log: Callable[[str], None]) -> dict[str, Any]:
    from embedrt.backends.onnxruntime import OnnxRuntimeBackend
    from embedrt.backends.tensorrt import TensorRTBackend
    from embedrt.backends.trt_loader import given_plan
    from embedrt.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(artefact, manifest)
    texts = parity_texts(_query(manifest))
    texts.append(long_text(tokenizer.count_tokens, manifest.max_length))
    items = [e.ids for e in tokenizer.encode(texts, truncate=True)]
    ref_precision = "fp32" if "fp32" in manifest.graphs else record.key.precision
    with OnnxRuntimeBackend(artefact, manifest, BackendConfig(precision=ref_precision, device="cpu")) as ort:
        reference = _embed(ort, items, manifest, batched=False)
    engine = TensorRTBackend(artefact, manifest, BackendConfig(precision=record.key.precision, device="cuda"),
                             loader=given_plan(trt, record, plan))
    try:
        engine.open()
        modes = {"single": _embed(engine, items, manifest, batched=False),
                 "batched": _embed(engine, items, manifest, batched=True)}
        gpu = engine.describe().gpu or "?"
    finally:
        engine.close()
    cosines = np.stack([np.einsum("ij,ij->i", vectors, reference) for vectors in modes.values()])
    mode_i, text_i = np.unravel_index(np.argmin(cosines), cosines.shape)
    metric, threshold = ENGINE_TOLERANCE[record.key.precision]
    report = {
        "precision": record.key.precision,
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
        raise ParityError(
            f"{report['precision']} engine fails parity, so it was not installed: {report['gated_on']} "
            f"{report[report['gated_on']]:.6f} < {report['threshold']} (worst: text {report['worst_text_index']} "
            f"{report['worst_text']!r}, {report['worst_mode']})",
            report,
        )


__all__ = ["ENGINE_TOLERANCE", "check", "verify_plan"]
