"""What ``embedrt quantize`` says about a graph: the gate line it logs, the message it fails with, and the
``quantization`` record the manifest keeps.

Kept apart from the steps (``pipeline.py``) so that the wording, and the record a later reader of the
manifest relies on, are in one place. A failure message names what to try next: the layer groups that
hurt most, and the flags that keep them float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .autoexclude import Outcome
    from .judge import Judge, Metric
    from .pipeline import QuantizeOptions
    from .plan import Plan

Sensitivity = dict[str, list[dict[str, Any]]]  # "layer" / "role" -> rows, worst first


def log_gate(log: Callable[[str], None], name: str, judge: Judge, report: dict[str, Any]) -> None:
    log(f"  {name} vs FP32 {judge.summary(report)}")


def _missed(name: str, report: dict[str, Any], metric: Metric) -> str:
    return (f"{name} misses the quality gate: {metric.words} {report[metric.key]:.5f} < {report[metric.gate_key]} "
            f"(min {report[metric.floor]:.5f}); the artefact is unchanged.")


def _most_harmful(rows: Sequence[dict[str, Any]], metric: Metric) -> list[str]:
    return [f"{r['group']} ({r[f'{metric.key}_alone']:.5f})" for r in rows]


def qdq_failure(report: dict[str, Any], metric: Metric, sensitivity: Sensitivity | None, auto: Outcome | None,
                largest_errors: Sequence[tuple[str, float]]) -> str:
    """Why the Q/DQ graph was refused; ``largest_errors``: (module path, relative output error) of the
    layers that go wrong first, the hint given when no sensitivity was measured."""
    head = _missed("INT8 graph", report, metric)
    if auto is not None:
        kept = ", ".join(e["group"] for e in auto.record["excluded"]) or "none"
        head += (f" First try (all planned layers INT8): mean {auto.record['first_try'][metric.key]:.5f}."
                 f" Automatic exclusion gave up after keeping {len(auto.record['excluded'])} group(s) float "
                 f"({kept}; --max-auto-exclusions {auto.record['max_exclusions']}).")
        sensitivity = {t["granularity"]: t["sensitivity"] for t in auto.record["tries"]}
    if sensitivity is not None:
        worst = [row for key in ("role", "layer") if key in sensitivity
                 for row in _most_harmful(sensitivity[key][:3], metric)]
        return f"{head} Most harmful alone: {', '.join(worst)}. Exclude some with --exclude PATTERN."
    hint = ", ".join(f"{path} ({error:.1%} output error)" for path, error in largest_errors)
    return (f"{head} Largest errors at: {hint or 'n/a'}. Run with --per-layer-sensitivity to measure each "
            "layer group, then --exclude the worst (patterns match node names, module paths or classes).")


def cpu_failure(report: dict[str, Any], metric: Metric, auto: Outcome | None) -> str:
    head = _missed("int8-cpu graph", report, metric)
    if auto is None:
        return head + " Try --cpu-weight-bits 8, --smoothquant, or --exclude the most sensitive layers."
    kept = ", ".join(e["group"] for e in auto.record["excluded"]) or "none"
    worst = [row for t in auto.record["tries"] for row in _most_harmful(t["sensitivity"][:3], metric)]
    return (f"{head} Automatic exclusion gave up after keeping {len(auto.record['excluded'])} group(s) float "
            f"({kept}). Most harmful alone: {', '.join(worst)}.")


def qdq_record(options: QuantizeOptions, plan: Plan, calibration: dict[str, Any], sensitivity: Sensitivity | None,
               auto: Outcome | None) -> dict[str, Any]:
    """The manifest's ``quantization`` entry of the Q/DQ graph (TensorRT)."""
    import onnxruntime

    record: dict[str, Any] = {
        "target": "tensorrt", "format": "QDQ", "symmetric": True, "per_channel_weights": True,
        "activations": "int8, static per tensor",
        "method": options.method, "smoothquant_alpha": options.smoothquant,
        "quantizer": "onnxruntime.quantization.quantize_static", "quantizer_version": onnxruntime.__version__,
        "calibration": calibration,
        **plan.summary(),
    }
    if sensitivity is not None:
        record["sensitivity"] = sensitivity
    if auto is not None:
        record["auto_exclude"] = auto.record
    return record


def cpu_record(options: QuantizeOptions, plan: Plan, per_tensor: dict[str, Any], integer_ops: dict[str, int],
               speed_hint: dict[str, Any], auto: Outcome | None) -> dict[str, Any]:
    """The manifest's ``quantization`` entry of the CPU graph; ``per_tensor``: the per-tensor search's record."""
    import onnxruntime

    fast = bool(per_tensor["layers"])
    bits = options.cpu_weight_bits
    record: dict[str, Any] = {
        "target": "onnxruntime-cpu", "cpu_only": True,
        "format": "dynamic u8s8: com.microsoft.MatMulIntegerToFloat per token"
                  + (", com.microsoft.DynamicQuantizeMatMul per tensor after norms" if fast else ""),
        "activations": "uint8 with zero point 128 (symmetric), one scale per token, computed at run time"
                       + ("; inputs fed by a norm: uint8 asymmetric, one scale per tensor per run" if fast else ""),
        "per_tensor": per_tensor,
        "weights": f"int8 per output channel, symmetric, {bits}-bit range [-{2 ** (bits - 1) - 1}, "
                   f"{2 ** (bits - 1) - 1}]",
        "weight_bits": bits,
        # vpmaddubsw (AVX2 / AVX-512 without VNNI) adds two u8 x s8 products in a saturating int16.
        "saturation_free_on_avx2": bits == 7,
        "quantizer": "embedrt_export.quantize.cpu_int8", "onnxruntime_version": onnxruntime.__version__,
        "smoothquant_alpha": options.smoothquant,
        "integer_ops": integer_ops,
        "speed_hint": speed_hint,
        **plan.summary(),
    }
    if auto is not None:
        record["auto_exclude"] = auto.record
    return record
