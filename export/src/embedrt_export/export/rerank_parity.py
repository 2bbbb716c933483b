"""Parity of a reranker export: the graph's scores against the model card's, pair by pair.

Fixed (query, document) pairs: a relevant and an irrelevant document, multilingual text, code,
emoji and accents, one character each, an empty document, an empty query, a custom instruction
(template rerankers), and a document longer than the maximum length. Each pair runs alone and
inside padded batches; each score is compared with the PyTorch reference of that pair alone. The
metric is the largest absolute score difference; above the tolerance the export fails.

Before any graph runs, the pairs are tokenized as the runtime will (``PairEncoder``) and must give
the reference's ids exactly: a difference there would be a runtime that scores other tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, ParityError
from .parity import long_text
from .rerank_reference import EncodedPairs, Pair, PairEncoder, RerankReference, Scored

# Largest |score - reference score| per graph precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3}

_QUERY = "what is the capital of France?"
BASE_PAIRS = (
    Pair(_QUERY, "Paris is the capital and largest city of France."),
    Pair(_QUERY, "The quick brown fox jumps over the lazy dog."),
    Pair("Wie springt der Fuchs?",
         "Der schnelle braune Fuchs springt über den faulen Hund. Быстрая лиса. 敏捷的棕色狐狸"),
    Pair("python function that adds two numbers", "def add(a, b):\n    return a + b"),
    Pair("launch 🚀", "Launch day 🚀🔥 — emoji, accents (café, naïve) and CJK: 日本語のテキスト"),
    Pair("a", "b"),
    Pair(_QUERY, ""),
    Pair("", "A document without a query."),
)
_INSTRUCTED = Pair("SELECT users", "SELECT id, name FROM users WHERE active = 1;",
                   "Given a SQL question, find the query")


def parity_pairs(count_tokens: Callable[[str], int], max_length: int, instructions: bool) -> tuple[list[Pair], int]:
    """The fixed pairs and the index of the over-long one (last)."""
    pairs = list(BASE_PAIRS) + ([_INSTRUCTED] if instructions else [])
    pairs.append(Pair(_QUERY, long_text(count_tokens, max_length)))
    return pairs, len(pairs) - 1


def _batches(count: int, long_index: int) -> list[list[int]]:
    """All short pairs together; the over-long one with one short pair, so that it is padded too."""
    short = [i for i in range(count) if i != long_index]
    return [short, [long_index, short[0]]]


@dataclass(frozen=True)
class RerankGate:
    """The parity gate of one reranker export: fixed pairs, their reference scores, the runtime's encoding."""

    pairs: list[Pair]
    reference: Scored
    encoder: PairEncoder
    long_index: int
    log: Callable[[str], None]
    fp16_weights: Scored | None = None  # the reference with FP16-rounded weights: what FP16 graphs are gated on

    @classmethod
    def prepare(cls, ref: RerankReference, model_dir: Path, log: Callable[[str], None],
                fp16: bool = True) -> RerankGate:
        spec = ref.spec
        assert spec.rerank is not None
        prompt = spec.rerank.prompt
        encoder = PairEncoder(model_dir / "tokenizer.json", prompt, spec.max_length, spec.pad_token_id,
                              "token_type_ids" in spec.inputs)
        pairs, long_index = parity_pairs(encoder.count, spec.max_length, prompt.takes_instruction)
        log(f"reference: PyTorch FP32, the model's own scoring, on {len(pairs)} parity pairs")
        reference = ref.score_alone(pairs)
        for i, pair in enumerate(pairs):
            got_ids, got_types = encoder.encode(pair)
            types = reference.type_ids
            if got_ids != reference.ids[i] or (types is not None and encoder.token_types and got_types != types[i]):
                raise ExportError(
                    f"tokenizer.json encodes parity pair {i} ({pair.query[:30]!r}, {pair.document[:30]!r}) differently "
                    "from the reference's transformers tokenizer; the runtime would not score what the model card "
                    "scores. Re-save the tokenizer with `AutoTokenizer.from_pretrained(...).save_pretrained(...)`")
        rounded = None
        if fp16:
            log("reference: the same with the body's weights rounded to FP16 (the FP16 graphs' gate)")
            rounded = ref.score_alone_fp16_weights(pairs)
        return cls(pairs, reference, encoder, long_index, log, rounded)

    def measure(self, path: Path, precision: str, sides: Sequence[str]) -> dict[str, Any]:
        floor = self.fp16_weights if precision == "fp16" else None
        report = measure(self.pairs, self.reference, self.encoder.batch, _ort_runner(path), precision,
                         self.long_index, sides, fp16_weights=floor)
        self.log(f"parity: {precision} {path.name} vs {report['reference']}: max |Δscore| "
                 f"{report['max_abs_score_diff']:.2e} (threshold {report['threshold_max_abs_score_diff']}), mean "
                 f"{report['mean_abs_score_diff']:.2e}; max |Δlogit| {report['max_abs_logit_diff']:.2e}")
        if floor is not None:
            self.log(f"  (vs PyTorch FP32 {report['vs_fp32']['max_abs_score_diff']:.2e}, vs FP16-rounded weights "
                     f"{report['vs_fp16_weights']['max_abs_score_diff']:.2e}; FP16 weights alone move scores by "
                     f"{report['fp16_weight_rounding']['max_abs_score_diff']:.2e})")
        return report

    @staticmethod
    def check(report: dict[str, Any]) -> None:
        check(report)


Run = Callable[[EncodedPairs], np.ndarray]  # -> [2, batch]: scores, logits


def _ort_runner(path: Path) -> Run:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(enc: EncodedPairs) -> np.ndarray:
        return np.stack(session.run(["score", "logit"], enc.feeds()))

    return run


def measure(pairs: Sequence[Pair], reference: Scored, encode: Callable[[Sequence[Pair], str], EncodedPairs],
            run: Run, precision: str, long_index: int, padding_sides: Sequence[str] = ("right",),
            fp16_weights: Scored | None = None) -> dict[str, Any]:
    """Compare ``run``'s scores with ``reference`` (one per pair) alone and in padded batches. The
    logits are compared too, for the record: where scores saturate near 0 or 1 (as random weights
    can make them), the logit still shows what the graph computes.

    ``fp16_weights`` (FP16 graphs): the reference with the weights FP16 stores rounded to FP16. The
    graph is then gated against whichever of the two references it is closer to: within the tolerance
    of the FP32 model, or of the model as FP16 stores it, it computes correctly; what FP16 storage
    alone costs (at 0.6B width ~2.5e-3, more than the whole budget) is not the graph's error. Both
    differences and the rounding's own are recorded (``vs_fp32``, ``vs_fp16_weights``,
    ``fp16_weight_rounding``); ``reference`` names the one gated on."""
    modes: dict[str, np.ndarray] = {"single": np.empty((2, len(pairs)))}
    for i, pair in enumerate(pairs):
        modes["single"][:, i] = run(encode([pair], "right"))[:, 0]
    for side in padding_sides:
        got = np.empty((2, len(pairs)))
        for batch in _batches(len(pairs), long_index):
            got[:, batch] = run(encode([pairs[i] for i in batch], side))
        modes[f"batch_{side}"] = got
    stacked = np.stack(list(modes.values()))  # [mode, score | logit, pair]
    references = {"pytorch-fp32": reference}
    if fp16_weights is not None:
        references["pytorch-fp16-weights"] = fp16_weights
    name, worst_by = closest_reference(stacked[:, 0], {k: r.scores for k, r in references.items()})
    fp32, reference = reference, references[name]
    diffs = np.abs(stacked[:, 0] - reference.scores[None, :])
    logit_diffs = np.abs(stacked[:, 1] - reference.logits[None, :])
    mode_idx, pair_idx = (int(i) for i in np.unravel_index(np.argmax(diffs), diffs.shape))
    worst = float(diffs[mode_idx, pair_idx])
    threshold = TOLERANCE[precision]
    pair = pairs[pair_idx]
    against_fp32 = {}
    if fp16_weights is not None:
        against_fp32 = {
            **{f"vs_{key}": {"max_abs_score_diff": worst_by[label],
                             "max_abs_logit_diff": float(np.abs(stacked[:, 1] - references[label].logits).max())}
               for key, label in (("fp32", "pytorch-fp32"), ("fp16_weights", "pytorch-fp16-weights"))},
            "fp16_weight_rounding": {"max_abs_score_diff": float(np.abs(fp16_weights.scores - fp32.scores).max()),
                                     "max_abs_logit_diff": float(np.abs(fp16_weights.logits - fp32.logits).max())},
        }
    return {
        "precision": precision,
        "reference": name,
        "metric": "max_abs_score_diff",
        "threshold_max_abs_score_diff": threshold,
        "max_abs_score_diff": worst,
        "mean_abs_score_diff": float(diffs.mean()),
        "per_mode_max_abs_score_diff": {m: float(d.max()) for m, d in zip(modes, diffs, strict=True)},
        "max_abs_logit_diff": float(logit_diffs.max()),
        "reference_score_range": [float(reference.scores.min()), float(reference.scores.max())],
        "reference_logit_range": [float(reference.logits.min()), float(reference.logits.max())],
        "worst_pair_index": pair_idx,
        "worst_pair": f"{pair.query[:40]} | {pair.document[:40]}",
        "worst_mode": list(modes)[mode_idx],
        "pairs": len(pairs),
        "passed": bool(worst <= threshold),
        **against_fp32,
    }


def closest_reference(got: np.ndarray, references: dict[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """The reference ``got`` (scores, ``[..., pair]``) is closest to by max |Δscore|, and that maximum
    against each. FP16 and INT8 graphs and engines are gated against the closer of FP32 and the model
    as its precision stores it (the export here, ``trt.verify`` after a build)."""
    worst = {name: float(np.abs(got - ref).max()) for name, ref in references.items()}
    return min(worst, key=worst.__getitem__), worst


def check(report: dict[str, Any]) -> None:
    if not report["passed"]:
        raise ParityError(
            f"{report['precision']} reranker graph fails parity: max |score difference| "
            f"{report['max_abs_score_diff']:.2e} > {report['threshold_max_abs_score_diff']} on pair "
            f"{report['worst_pair_index']} "
            f"({report['worst_pair']!r}, {report['worst_mode']}) against {report['reference']}"
            + ("; export the FP32 graph alone with `--dtype fp32`" if report["precision"] == "fp16" else ""),
            report,
        )
