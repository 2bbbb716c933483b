"""The INT8 quality gate of a reranker: a quantized graph against the FP32 graph on held-out query lists.

A reranker's users see rankings, so the gate compares rankings: each held-out query with its list
of documents (``data/rerank_heldout.jsonl``: some on the query's subject, most not) is scored by
both graphs, and the two orders of the list are compared. Reported:

- Spearman ρ per list, between the FP32 and the INT8 order (1: the same order; ties share their
  mean rank): the mean over lists is the gate, the min shows one list that broke;
- top-3 agreement: the mean over lists of |top 3 (FP32) ∩ top 3 (INT8)| / 3, what a user who reads
  the first results notices;
- max and mean |Δscore| and |Δlogit| over all pairs: how far the numbers moved, where a ranking
  alone would hide a shift that moves every score alike (a threshold on scores would notice it).

Lists are ranked by logit: the score is a sigmoid of it, which rounds distinct logits of confident
pairs to the same float32. A list to which the FP32 graph gives one logit for every document (each
pair truncated before its document starts, at a short maximum length) has no order to agree with:
it is left out of the ranking figures and counted in ``unranked_lists``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from embedrt.manifest import Manifest

from ..errors import QuantizationError
from . import calibration
from .calibration import Feed, QueryList
from .judge import Calibration, Log, Metric
from .quality import open_session

if TYPE_CHECKING:
    from .pipeline import QuantizeOptions

TOP_K = 3
SPEARMAN = Metric("mean_spearman", "min_spearman", "mean Spearman", default_gate=0.95)


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (smallest first); tied values share their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    out = np.empty(len(values), np.float64)
    start = 0
    while start < len(values):
        end = start + 1
        while end < len(values) and sorted_values[end] == sorted_values[start]:
            end += 1
        out[order[start:end]] = (start + end + 1) / 2  # the mean of ranks start+1 .. end
        start = end
    return out


def spearman(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the two rankings; 0 where ``candidate`` ties every item
    and ``reference`` does not, NaN where ``reference`` does (no order to agree with)."""
    a, b = ranks(reference) - (len(reference) + 1) / 2, ranks(candidate) - (len(candidate) + 1) / 2
    if not a.any():
        return float("nan")
    if not b.any():
        return 0.0
    return float(a @ b) / float(np.sqrt((a @ a) * (b @ b)))


def top_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = TOP_K) -> float:
    """|top-k(reference) ∩ top-k(candidate)| / k, highest first (ties in list order); k at most the list."""
    k = min(k, len(reference))
    top = [set(np.argsort(-v, kind="stable")[:k].tolist()) for v in (reference, candidate)]
    return len(top[0] & top[1]) / k


@dataclass(frozen=True)
class HeldOutLists:
    """Held-out query lists, tokenized once, and the FP32 graph's scores and logits of every pair: the
    rerank task's judge (judge.py)."""

    metric: ClassVar[Metric] = SPEARMAN
    lists: tuple[QueryList, ...]
    batches: tuple[Feed, ...]
    order: tuple[int, ...]  # row i of the concatenated batches is pair order[i] (lists in turn)
    reference: np.ndarray  # [2, pairs]: scores, logits
    ranked: tuple[int, ...] = ()  # the lists whose documents the FP32 graph does not all score alike

    @classmethod
    def build(cls, artefact: Path, manifest: Manifest, lists: Sequence[QueryList], reference_graph: Path,
              batch_size: int = 16) -> HeldOutLists:
        batches, order = calibration.pair_feeds(artefact, manifest, lists, batch_size)
        partial = cls(tuple(lists), tuple(batches), tuple(order), np.empty((2, 0), np.float32))
        reference = partial.score(open_session(reference_graph))
        ranked = tuple(i for i, s in enumerate(partial.spans()) if np.ptp(reference[1][s]) > 0)
        if not ranked:
            raise QuantizationError(
                f"the FP32 graph gives every document of each held-out query list the same score: nothing to rank "
                f"(at max length {manifest.max_length}, are the pairs truncated before their documents start?)")
        return cls(partial.lists, partial.batches, partial.order, reference, ranked)

    def score(self, session: Any) -> np.ndarray:
        """[2, pairs]: the scores and logits of every pair, in list order."""
        rows = np.concatenate([np.stack(session.run(["score", "logit"], feed)) for feed in self.batches], axis=1)
        out = np.empty_like(rows)
        out[:, list(self.order)] = rows
        return out

    def spans(self) -> list[slice]:
        """Each list's pairs in the order ``score`` returns them."""
        bounds = np.cumsum([0, *(len(q.documents) for q in self.lists)])
        return [slice(int(a), int(b)) for a, b in pairwise(bounds)]

    def measure(self, graph: Path, gate: float) -> dict[str, Any]:
        return compare(self, self.score(open_session(graph)), gate)

    def summary(self, report: dict[str, Any]) -> str:
        unranked = f"; {report['unranked_lists']} more that FP32 scores all alike" if report["unranked_lists"] else ""
        return (f"on {report['lists']} held-out query lists ({report['pairs']} pairs{unranked}): mean Spearman "
                f"{report['mean_spearman']:.5f}, min {report['min_spearman']:.5f}, top-{TOP_K} agreement "
                f"{report[f'top_{TOP_K}_agreement']:.3f}, max |Δscore| {report['max_abs_score_diff']:.2e}, "
                f"max |Δlogit| {report['max_abs_logit_diff']:.2e} (gate: mean Spearman >= "
                f"{report['gate_mean_spearman']})")


def compare(held: HeldOutLists, candidate: np.ndarray, gate: float) -> dict[str, Any]:
    """The ranking report of ``candidate`` (``HeldOutLists.score`` of a quantized graph) against FP32."""
    ref_logits, new_logits = held.reference[1], candidate[1]
    spans = [held.spans()[i] for i in held.ranked]
    rhos = np.array([spearman(ref_logits[s], new_logits[s]) for s in spans])
    worst = int(np.argmin(rhos))
    score_diff, logit_diff = np.abs(candidate[0] - held.reference[0]), np.abs(new_logits - ref_logits)
    mean = float(rhos.mean())
    return {
        "reference": "onnx-fp32",
        "lists": len(held.ranked),
        "unranked_lists": len(held.lists) - len(held.ranked),
        "pairs": int(ref_logits.shape[0]),
        "ranked_by": "logit",
        "mean_spearman": mean,
        "min_spearman": float(rhos[worst]),
        f"top_{TOP_K}_agreement": float(np.mean([top_agreement(ref_logits[s], new_logits[s]) for s in spans])),
        "max_abs_score_diff": float(score_diff.max()),
        "mean_abs_score_diff": float(score_diff.mean()),
        "max_abs_logit_diff": float(logit_diff.max()),
        "mean_abs_logit_diff": float(logit_diff.mean()),
        "worst_list": held.lists[held.ranked[worst]].query[:80],
        "gate_mean_spearman": gate,
        "passed": bool(mean >= gate),
    }


def prepare(root: Path, manifest: Manifest, fp32: Path, options: QuantizeOptions,
            log: Log) -> tuple[Calibration, HeldOutLists]:
    """The calibration pairs (``--calibration`` or the shipped lists) and the judge on the shipped held-out lists."""
    lists, held_lists = calibration.load_sets(options, calibration.load_lists, calibration.SHIPPED_LISTS)
    batches, _ = calibration.pair_feeds(root, manifest, lists, options.batch_size)
    pairs = sum(len(q.documents) for q in lists)
    log(f"held-out: {len(held_lists)} query lists, {sum(len(q.documents) for q in held_lists)} pairs through "
        "the FP32 graph (reference)")
    held = HeldOutLists.build(root, manifest, held_lists, fp32)
    source = str(options.calibration) if options.calibration else "shipped:rerank_calibration.jsonl"
    record = {"source": source, "lists": len(lists), "pairs": pairs, "batch_size": options.batch_size}
    return Calibration(batches, record, f"{pairs} pairs of {len(lists)} query lists"), held
