"""The INT8 quality gate of an embedding model: a quantized graph against the FP32 graph on held-out texts.

Three numbers, because each misses something the others catch: mean cosine (the gate), min cosine
(one text can break while the mean looks fine), and top-10 retrieval agreement (the overlap of the
ten documents each query retrieves with either model: what users of an embedding model notice).
Also the ONNX Runtime helpers both tasks' judges use (``open_session``, ``node_errors``, ``throughput``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from embedrt.manifest import Manifest

from . import calibration
from .calibration import Feed, TextEncoder
from .judge import Calibration, Log, Metric

if TYPE_CHECKING:
    from .pipeline import QuantizeOptions

TOP_K = 10
COSINE = Metric("mean_cosine", "min_cosine", "mean cosine", default_gate=0.99)


def open_session(graph: Path | bytes, threads: int = 0) -> Any:
    """A quiet ONNX Runtime CPU session on a graph file or a serialized model; ``threads`` 0: ORT's choice."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class HeldOut:
    """Held-out texts, tokenized once, and the FP32 reference vectors: the embedding task's judge (judge.py)."""

    metric: ClassVar[Metric] = COSINE
    texts: tuple[str, ...]
    queries: tuple[int, ...]  # indices into texts
    documents: tuple[int, ...]
    batches: tuple[Feed, ...]
    order: tuple[int, ...]  # texts[order[i]] is row i of the concatenated batches
    reference: np.ndarray

    @classmethod
    def build(cls, texts: Sequence[str], kinds: Sequence[str], encoder: TextEncoder, reference_graph: Path,
              batch_size: int = 16) -> HeldOut:
        lengths = encoder.lengths(texts)
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        batches = tuple(encoder.encode([texts[i] for i in order[s: s + batch_size]])
                        for s in range(0, len(order), batch_size))
        partial = cls(tuple(texts), tuple(i for i, k in enumerate(kinds) if k == "query"),
                      tuple(i for i, k in enumerate(kinds) if k != "query"), batches, tuple(order),
                      np.empty((0, 0), np.float32))
        reference = partial.embed(open_session(reference_graph))
        return cls(partial.texts, partial.queries, partial.documents, batches, partial.order, reference)

    def embed(self, session: Any) -> np.ndarray:
        rows = np.concatenate([session.run(["sentence_embedding"], feed)[0] for feed in self.batches])
        out = np.empty_like(rows)
        out[list(self.order)] = rows
        return out

    def measure(self, graph: Path, gate: float) -> dict[str, Any]:
        return compare(self, self.embed(open_session(graph)), gate)

    def summary(self, report: dict[str, Any]) -> str:
        return (f"on {report['texts']} held-out texts: mean cosine {report['mean_cosine']:.5f}, "
                f"min {report['min_cosine']:.5f}, top-{TOP_K} retrieval agreement "
                f"{report[f'retrieval_agreement_at_{TOP_K}']:.3f} (gate: mean >= {report['gate_mean_cosine']})")


def prepare(root: Path, manifest: Manifest, fp32: Path, options: QuantizeOptions,
            log: Log) -> tuple[Calibration, HeldOut]:
    """The calibration texts (``--calibration`` or the shipped set) and the judge on the shipped held-out texts."""
    records, held_records = calibration.load_sets(options, calibration.load_records, calibration.SHIPPED)
    encoder = TextEncoder(root, manifest)
    batches = encoder.batches(calibration.format_records(records, manifest), options.batch_size)
    log(f"held-out: {len(held_records)} texts through the FP32 graph (reference)")
    held = HeldOut.build(calibration.format_records(held_records, manifest), [r.kind for r in held_records],
                         encoder, fp32)
    source = str(options.calibration) if options.calibration else "shipped:calibration.jsonl"
    record = {"source": source, "texts": len(records), "batch_size": options.batch_size}
    return Calibration(batches, record, f"{len(records)} texts"), held


def retrieval_agreement(reference: np.ndarray, candidate: np.ndarray, queries: Sequence[int],
                        documents: Sequence[int], k: int = TOP_K) -> float:
    """Mean over queries of |top-k(reference) ∩ top-k(candidate)| / k, documents ranked by dot product."""
    if not queries or len(documents) < k:
        return float("nan")
    q, d = list(queries), list(documents)
    top_ref = np.argsort(-(reference[q] @ reference[d].T), axis=1)[:, :k]
    top_new = np.argsort(-(candidate[q] @ candidate[d].T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_new, strict=True)]))


def compare(held: HeldOut, candidate: np.ndarray, gate: float) -> dict[str, Any]:
    cosines = np.sum(held.reference * candidate, axis=1) / (
        np.linalg.norm(held.reference, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12)
    worst = int(np.argmin(cosines))
    mean = float(cosines.mean())
    return {
        "reference": "onnx-fp32",
        "texts": len(held.texts),
        "queries": len(held.queries),
        "documents": len(held.documents),
        "mean_cosine": mean,
        "min_cosine": float(cosines[worst]),
        "p05_cosine": float(np.percentile(cosines, 5)),
        f"retrieval_agreement_at_{TOP_K}": retrieval_agreement(held.reference, candidate, held.queries,
                                                                held.documents),
        "worst_text": held.texts[worst][:80],
        "gate_mean_cosine": gate,
        "passed": bool(mean >= gate),
    }


def node_errors(fp32_graph: Path, int8_graph: Path, nodes: Sequence[str], feed: Feed) -> dict[str, float]:
    """Relative error of each named node's first output, INT8 graph against FP32, on one batch.

    Cheap where full sensitivity analysis is not: one run of each graph with the outputs exposed.
    Errors accumulate downstream, so read it as "where it goes wrong first", not as blame per node.
    """
    import onnx

    outputs: dict[str, str] = {}
    values: list[dict[str, np.ndarray]] = []
    for path in (fp32_graph, int8_graph):
        model = onnx.load(str(path))
        by_name = {n.name: n for n in model.graph.node}
        wanted = [by_name[n].output[0] for n in nodes if n in by_name]
        outputs = {n: by_name[n].output[0] for n in nodes if n in by_name}
        have = {o.name for o in model.graph.output}
        for name in wanted:
            if name not in have:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        session = open_session(model.SerializeToString())
        values.append(dict(zip(wanted, session.run(wanted, feed), strict=True)))
    errors = {}
    for node, tensor in outputs.items():
        ref, new = values[0].get(tensor), values[1].get(tensor)
        if ref is not None and new is not None:
            errors[node] = float(np.linalg.norm(new - ref) / (np.linalg.norm(ref) + 1e-12))
    return errors


def throughput(session: Any, feed: Feed, repeats: int = 3) -> float:
    """Tokens per second on one fixed batch, best of ``repeats`` after a warm-up run."""
    import time

    first = [session.get_outputs()[0].name]  # the embedding, the score: either task's main output
    session.run(first, feed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(first, feed)
        best = min(best, time.perf_counter() - start)
    return float(feed["attention_mask"].sum()) / best
