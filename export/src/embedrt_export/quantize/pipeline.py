"""``embedrt quantize``: an artefact's FP32 graph -> INT8 graphs behind a quality gate.

Two INT8 graphs, one per kind of runtime, each gated on its own:

- ``int8`` (``model.int8.onnx``), for TensorRT: calibrated static Q/DQ, explicit QuantizeLinear /
  DequantizeLinear pairs, symmetric, every zero point 0 (TensorRT rejects others). It also runs on
  ONNX Runtime CPU, but there at about FP32 speed: x86 ONNX Runtime has fast kernels for uint8 x int8
  only, not for the int8 x int8 this graph asks for. Quantizer: ONNX Runtime's static QDQ quantizer
  (see docs/int8.md for the comparison with ModelOpt).
- ``int8-cpu`` (``model.int8-cpu.onnx``), for ONNX Runtime CPU: u8s8 integer GEMMs with per-token
  activation scales computed at run time (``cpu_int8.py``). ``precision="int8"`` on a CPU loads it.

Both take the same plan (which MatMuls are linear layers, ``--exclude``) and the same automatic
exclusion search when the first try misses the gate. Everything is written in a hidden directory
inside the artefact, checked, gated, and only then moved into place and recorded in the manifest
(written atomically). A failure leaves the artefact as it was.

The steps are the same for every task; what the graphs are calibrated on and how they are judged
against FP32 come from the task (``judge.py``): embedding models on held-out texts by cosine,
rerankers on held-out query lists by the rankings they give.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from embedrt.manifest import MANIFEST_NAME, GraphFile, Manifest, Precision, load_manifest

from ..errors import QuantizationError
from ..export.artefact import checksums, write_atomic
from . import autoexclude, calibration, cpu_int8, quality
from .judge import Calibration, Judge, for_task
from .plan import QUANTIZED_OPS, Plan, make_plan, nonzero_zero_points, quantized_matmuls, role
from .report import cpu_failure, cpu_record, log_gate, qdq_failure, qdq_record

METHODS = ("entropy", "max", "percentile")
Log = Callable[[str], None]


@dataclass(frozen=True)
class QuantizeOptions:
    calibration: Path | None = None  # txt / jsonl; None: the shipped set
    method: str = "max"
    smoothquant: float | None = None  # alpha, or None for off
    exclude: tuple[str, ...] = ()
    gate: float | None = None  # minimum of the task's gated metric (judge.py); None: the task's default
    per_layer_sensitivity: bool = False
    auto_exclude: bool = True  # below the gate, keep the most harmful layer groups float (autoexclude.py)
    max_auto_exclusions: int = 4  # groups the search may keep float before it gives up
    cpu_variant: bool = True  # build the int8-cpu graph (ONNX Runtime CPU)
    qdq_graph: bool = True  # build the int8 Q/DQ graph (TensorRT); --target cpu turns it off
    # How much of the gated metric (mean cosine, mean Spearman) a norm-fed layer group may cost, against the
    # all-per-token graph, to get one activation scale per tensor (a fused, faster kernel); None: every
    # layer per token (cpu_int8.py).
    per_tensor_tolerance: float | None = 0.0005
    cpu_weight_bits: int = 7  # 7: saturation-free on every x86 CPU; 8: finer, may saturate on AVX2 (cpu_int8.py)
    batch_size: int = 8
    limit_calibration: int | None = None  # use the first N texts (a reranker's: query lists); tests, quick looks
    limit_heldout: int | None = None
    show_progress: bool = True


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if name not in methods:
        raise QuantizationError(f"--method must be one of {', '.join(METHODS)} (got {name!r})")
    return methods[name]


def _static_options() -> dict[str, Any]:
    return {
        # TensorRT accepts only symmetric Q/DQ: every zero point 0.
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # Quantize what feeds a MatMul, not what comes out of it: an INT8 output would round the
        # residual branch (BERT's FFN output carries outliers), and TensorRT fuses the rest anyway.
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        # One batch per calibration step: histograms merge batch by batch, lengths may differ.
        "CalibStridedMinMax": 1,
    }


@dataclass
class _Work:
    """What one quantize run has in hand: paths in the staging directory, the calibration feeds, the judge."""

    artefact: Path
    stage: Path
    manifest: Manifest
    options: QuantizeOptions
    log: Log
    source: Path  # the float graph the quantizer reads (pre-processed, maybe smoothed)
    plan: Plan
    cpu_plan: Plan  # the same layers but those the CPU quantizer cannot take; its own exclusion search starts here
    judge: Judge
    calib: Calibration

    @property
    def threshold(self) -> float:
        """``--gate``, or the task's default: ``quantize_artefact`` settles it before any work."""
        assert self.options.gate is not None
        return self.options.gate

    def quantize_static(self, out: Path, nodes: tuple[str, ...], progress: bool) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        for stale in (out, out.with_name(f"{out.name}.data")):
            stale.unlink(missing_ok=True)  # onnx appends external data to an existing file: start clean
        reader = calibration.CalibrationReader(self.calib.batches, show_progress=progress)
        # ORT's histogram calibrators print a line per batch to stdout; the progress bar says enough.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(self.source), str(out), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=list(nodes),
                use_external_data_format=True, calibrate_method=_calibrate_method(self.options.method),
                extra_options=_static_options(), calibration_cache_path=str(self.stage / "ranges.json"))
        reader.close()

    def measure(self, graph: Path) -> dict[str, Any]:
        """The quality report of ``graph`` against FP32, gated."""
        return self.judge.measure(graph, self.threshold)

    def figure(self, graph: Path) -> float:
        """``graph``'s gated figure (a probe's: no gate)."""
        return float(self.judge.measure(graph, 0.0)[self.judge.metric.key])


def quantize_artefact(artefact: str | Path, options: QuantizeOptions = QuantizeOptions(),
                      log: Log = print) -> Manifest:
    """Add the INT8 graphs (Q/DQ for TensorRT, per-token u8s8 for CPU) to ``artefact``; returns the new manifest."""
    root = Path(artefact).resolve()
    manifest = load_manifest(root)
    if options.gate is None:
        options = replace(options, gate=for_task(manifest.task).metric.default_gate)
    fp32 = root / manifest.graph("fp32").file
    _calibrate_method(options.method)
    if not (options.qdq_graph or options.cpu_variant):
        raise QuantizationError("nothing to build: both the Q/DQ (TensorRT) and the CPU INT8 graph are off")
    if options.cpu_weight_bits not in (7, 8):
        raise QuantizationError(f"CPU weight bits must be 7 or 8 (got {options.cpu_weight_bits})")
    started = time.perf_counter()
    try:  # the graphs are staged inside the artefact: a read-only one fails here, before any work
        stage = Path(tempfile.mkdtemp(prefix=".quantize-", dir=root))
    except OSError as exc:
        raise QuantizationError(f"cannot write to the artefact {root} ({exc.strerror or exc}); the INT8 graphs "
                                "are added inside it: make it writable, or copy it (`cp -r ARTEFACT COPY`) and "
                                "quantize the copy") from exc
    try:
        work = _prepare(root, stage, manifest, fp32, options, log)
        graphs = [_static_graph(work, fp32)] if options.qdq_graph else []
        if options.cpu_variant:
            graphs.append(_cpu_graph(work))
        updated = _commit(root, stage, manifest, graphs)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(f"quantized {root} in {time.perf_counter() - started:.1f} s: {', '.join(g.precision for g in graphs)}")
    return updated


def _prepare(root: Path, stage: Path, manifest: Manifest, fp32: Path, options: QuantizeOptions, log: Log) -> _Work:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib, judge = for_task(manifest.task).prepare(root, manifest, fp32, options, log)
    # Shape inference only: ORT's graph optimisations would fuse norms into com.microsoft ops,
    # which TensorRT cannot parse and which would hide the structure the plan reads.
    source = stage / "float.onnx"
    quant_pre_process(str(fp32), str(source), skip_optimization=True, skip_symbolic_shape=True,
                      save_as_external_data=True, all_tensors_to_one_file=True,
                      external_data_location="float.onnx.data")
    structure = onnx.load(str(fp32), load_external_data=False)
    plan = make_plan(structure, options.exclude)
    if not plan.quantize:
        raise QuantizationError("no linear layer is left to quantize; check --exclude")
    log(f"plan: {len(plan.quantize)} linear layers to INT8, {len(plan.excluded)} MatMul/Gemm kept float")
    cpu_plan = plan.without(cpu_int8.unsupported(structure, plan.quantize),
                            f"int8-cpu: {cpu_int8.CPU_UNSUPPORTED} (the CPU quantizer's kernels)")
    if options.smoothquant is not None:
        from .smoothquant import smooth

        model = onnx.load(str(source))
        counts = smooth(model, plan.quantize, calib.batches, options.smoothquant)
        log(f"smoothquant (alpha {options.smoothquant}): {counts['folded']} folded, "
            f"{counts['inserted_mul']} Mul inserted")
        source = stage / "smoothed.onnx"
        onnx.save_model(model, str(source), save_as_external_data=True, location="smoothed.onnx.data")
    return _Work(root, stage, manifest, options, log, source, plan, cpu_plan, judge, calib)


def _static_graph(work: _Work, fp32: Path) -> GraphFile:
    import onnxruntime

    options, log = work.options, work.log
    out = work.stage / "model.int8.onnx"
    log(f"calibrating ({options.method}) on {work.calib.described}, quantizing with onnxruntime "
        f"{onnxruntime.__version__}")
    work.quantize_static(out, work.plan.quantize, options.show_progress)
    _validate(out, work.plan)
    report = work.measure(out)
    log_gate(log, "int8", work.judge, report)
    sensitivity = _sensitivity(work) if options.per_layer_sensitivity else None
    auto = None
    if not report["passed"] and _search_can_help(work):
        auto = autoexclude.search(work.plan, report, lambda plan, key: _probe(work, plan, key, sensitivity),
                                  lambda plan: _attempt(work, out, plan), options.max_auto_exclusions, log,
                                  work.judge.metric)
        report, work.plan = auto.report, auto.plan
        log(f"  auto-exclude {'passed' if auto.passed else 'gave up'} in {auto.record['seconds']} s")
    if not report["passed"]:
        hint = [] if auto is not None or sensitivity is not None else _largest_errors(work, fp32, out)
        raise QuantizationError(qdq_failure(report, work.judge.metric, sensitivity, auto, hint), report)
    return _derived(work, out, "int8", report, qdq_record(options, work.plan, work.calib.record, sensitivity, auto))


def _cpu_graph(work: _Work) -> GraphFile:
    """Per-token u8s8 INT8 for ONNX Runtime CPU: gated like the Q/DQ graph, with its own exclusion search."""
    options, log = work.options, work.log
    out = work.stage / "model.int8-cpu.onnx"
    plan, auto = work.cpu_plan, None
    log(f"int8-cpu: per-token u8s8, {options.cpu_weight_bits}-bit weights, {len(plan.quantize)} linear layers")
    report = _cpu_attempt(work, out, plan)
    log_gate(log, "int8-cpu", work.judge, report)
    if not report["passed"] and _search_can_help(work):
        auto = autoexclude.search(plan, report, lambda p, key: _cpu_probe(work, p, key),
                                  lambda p: _cpu_attempt(work, out, p), options.max_auto_exclusions, log,
                                  work.judge.metric)
        report, plan = auto.report, auto.plan
        log(f"  int8-cpu auto-exclude {'passed' if auto.passed else 'gave up'} in {auto.record['seconds']} s")
    if not report["passed"]:
        raise QuantizationError(cpu_failure(report, work.judge.metric, auto), report)
    per_tensor, report = _per_tensor_search(work, out, plan, report)
    feed = max(work.judge.batches, key=lambda b: int(b["attention_mask"].sum()))
    fp32_tps = quality.throughput(quality.open_session(work.source), feed)
    cpu_tps = quality.throughput(quality.open_session(out), feed)
    log(f"  ORT CPU on a {feed['input_ids'].shape[0]}x{feed['input_ids'].shape[1]} batch: fp32 {fp32_tps:.0f} "
        f"tokens/s, int8-cpu {cpu_tps:.0f} tokens/s ({cpu_tps / fp32_tps:.2f}x; one batch, a hint, not a benchmark)")
    speed = {"batch": list(feed["input_ids"].shape), "fp32_tokens_per_s": round(fp32_tps, 1),
             "int8_cpu_tokens_per_s": round(cpu_tps, 1)}
    integer_ops = cpu_int8.integer_kernels(onnx.load(str(out), load_external_data=False))
    return _derived(work, out, "int8-cpu", report, cpu_record(options, plan, per_tensor, integer_ops, speed, auto))


def _derived(work: _Work, out: Path, key: Precision, report: dict[str, Any], quantization: dict[str, Any]) -> GraphFile:
    """The FP32 graph's entry with this graph's file, key and reports: what else the export recorded about the
    graph's form (attention kind, the padding side it is exact for) holds for its quantized copies too."""
    return replace(work.manifest.graph("fp32"), file=out.name, precision=key, sha256="",
                   external_data=(f"{out.name}.data",), parity=report, quantization=quantization)


def _cpu_build(work: _Work, out: Path, nodes: tuple[str, ...], per_tensor: tuple[str, ...] = ()
               ) -> cpu_int8.CpuInt8Result:
    model = onnx.load(str(work.source))
    result = cpu_int8.quantize_per_token(model, nodes, work.options.cpu_weight_bits, per_tensor)
    for stale in (out, out.with_name(f"{out.name}.data")):
        stale.unlink(missing_ok=True)  # onnx appends external data to an existing file: start clean
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{out.name}.data")
    return result


def _cpu_attempt(work: _Work, out: Path, plan: Plan, per_tensor: tuple[str, ...] = ()) -> dict[str, Any]:
    """Build the CPU graph for ``plan``, check that every planned layer became an integer GEMM, gate it."""
    result = _cpu_build(work, out, plan.quantize, per_tensor)
    onnx.checker.check_model(str(out))
    if result.skipped or len(result.quantized) != len(plan.quantize):
        first = next(iter(result.skipped.items()), ("?", "?"))
        raise QuantizationError(f"the CPU quantizer left {len(plan.quantize) - len(result.quantized)} planned layers "
                                f"in float (e.g. {first[0]}: {first[1]})")
    return work.measure(out)


def _per_tensor_search(work: _Work, out: Path, plan: Plan, report: dict[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Give norm-fed layer groups one activation scale per tensor where that costs no quality.

    Each group (``cpu_int8.norm_fed_groups``) is tried on top of those already taken; it is kept when
    the graph still passes the gate and its gated figure (mean cosine, mean Spearman) stays within
    ``per_tensor_tolerance`` of the all-per-token graph's (``report``). ``out`` ends up holding the graph
    with the groups kept.
    Returns the manifest's record of the search (``layers``: those kept) and the gate report of ``out``.
    """
    tolerance = work.options.per_tensor_tolerance
    record: dict[str, Any] = {"tolerance": tolerance, "groups": [], "layers": []}
    if tolerance is None:
        return record, report
    model = onnx.load(str(work.source), load_external_data=False)
    groups = cpu_int8.norm_fed_groups(model, {n: role(plan.paths[n]) for n in plan.quantize})
    metric = work.judge.metric
    base = report[metric.key]
    kept: tuple[str, ...] = ()
    record[f"per_token_{metric.key}"] = base
    probe = work.stage / "probe-cpu.onnx"
    for name, nodes in groups.items():
        trial = kept + nodes
        got = _cpu_attempt(work, probe, plan, trial)
        accepted = bool(got["passed"] and got[metric.key] >= base - tolerance)
        record["groups"].append({"group": name, "nodes": len(nodes), **metric.brief(got), "kept": accepted})
        work.log(f"  int8-cpu: {name} with one scale per tensor -> {metric.words} {got[metric.key]:.5f}, "
                 f"min {got[metric.floor]:.5f} ({'kept' if accepted else 'stays per token'})")
        if accepted:
            kept, report = trial, got
    if kept:
        _cpu_build(work, out, plan.quantize, kept)
    for stale in (probe, probe.with_name(f"{probe.name}.data")):
        stale.unlink(missing_ok=True)
    record["layers"] = list(kept)
    return record, report


def _cpu_probe(work: _Work, plan: Plan, key: str) -> list[dict[str, Any]]:
    """Each group of ``plan`` alone in INT8 (per-token CPU graph), worst first."""
    rows = []
    for group, nodes in plan.groups(key).items():
        path = work.stage / "probe-cpu.onnx"
        _cpu_build(work, path, nodes)
        rows.append(_probe_row(work, group, nodes, path, "int8-cpu sensitivity"))
    return sorted(rows, key=lambda r: r[f"{work.judge.metric.key}_alone"])


def _probe_row(work: _Work, group: str, nodes: tuple[str, ...], graph: Path, what: str) -> dict[str, Any]:
    """One row of a sensitivity table: ``group`` alone in INT8 (``graph``), measured and logged."""
    metric = work.judge.metric
    alone = work.figure(graph)
    work.log(f"  {what}: only {group} in INT8 -> {metric.words} {alone:.5f}")
    return {"group": group, "nodes": len(nodes), f"{metric.key}_alone": alone}


def _validate(path: Path, plan: Plan) -> None:
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    bad = nonzero_zero_points(model)
    if bad:
        raise QuantizationError(f"{len(bad)} Q/DQ nodes have non-zero zero points (e.g. {bad[0]}); "
                                "TensorRT would reject the graph")
    done = set(quantized_matmuls(model))
    missing = [n for n in plan.quantize if n not in done]
    if missing:
        raise QuantizationError(f"the quantizer left {len(missing)} planned layers in float (e.g. {missing[0]})")


def _sensitivity(work: _Work) -> dict[str, list[dict[str, Any]]]:
    return {key: _probe(work, work.plan, key) for key in ("layer", "role")}


def _probe(work: _Work, plan: Plan, key: str,
           known: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Quantize one group of ``plan`` at a time (calibration reused) and measure it; worst first."""
    if known is not None and key in known:
        return known[key]  # --per-layer-sensitivity already measured the same groups
    rows = []
    for group, nodes in plan.groups(key).items():
        path = work.stage / "probe.onnx"
        work.quantize_static(path, nodes, progress=False)
        rows.append(_probe_row(work, group, nodes, path, "sensitivity"))
    return sorted(rows, key=lambda r: r[f"{work.judge.metric.key}_alone"])


def _search_can_help(work: _Work) -> bool:
    """Keeping layers float moves the graph towards FP32, which scores 1 against itself: no further."""
    if not work.options.auto_exclude or work.options.max_auto_exclusions < 1:
        return False
    if work.threshold > 1.0:
        work.log("  auto-exclude skipped: a gate above 1 cannot be reached even with every layer float")
        return False
    return True


def _attempt(work: _Work, out: Path, plan: Plan) -> dict[str, Any]:
    """One step of the search: the full graph for ``plan``, validated and gated like the first try."""
    work.quantize_static(out, plan.quantize, progress=False)
    _validate(out, plan)
    return work.measure(out)


def _largest_errors(work: _Work, fp32: Path, out: Path) -> list[tuple[str, float]]:
    """(module path, relative output error) of the three layers furthest from FP32 on one batch."""
    try:
        errors = quality.node_errors(fp32, out, work.plan.quantize, work.judge.batches[-1])
    except (ValueError, RuntimeError):  # e.g. a graph past protobuf's 2 GB limit: skip the hint
        return []
    top = sorted(errors, key=errors.__getitem__, reverse=True)[:3]
    return [(work.plan.paths[n], errors[n]) for n in top]


def _commit(root: Path, stage: Path, manifest: Manifest, graphs: list[GraphFile]) -> Manifest:
    """Move the new graphs into the artefact, then rewrite the manifest in one atomic step.

    Each graph replaces only the one with its own key: ``--target cpu`` keeps an existing Q/DQ graph.
    """
    for graph in graphs:
        for name in (graph.file, *graph.external_data):
            (stage / name).chmod(0o644)  # tempfiles are private; artefacts are shared read-only
    updated = manifest
    for graph in graphs:
        names = [graph.file, *graph.external_data]
        for name in names:
            os.replace(stage / name, root / name)
        sums = checksums(root, names)
        updated = updated.with_graph(GraphFile(**{**graph.__dict__, "sha256": sums[graph.file]}), sums)
    write_atomic(root / MANIFEST_NAME, updated.to_json())
    return updated
