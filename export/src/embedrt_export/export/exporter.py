"""``embedrt export``: checkpoint -> validated, self-describing ONNX artefact."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from embedrt.manifest import GraphFile, Manifest, TensorSpec

from ..errors import ExportError
from . import fused, onnx_export, parity
from .artefact import checksums, staging_dir
from .reference import Reference
from .source import content_hash, resolve_model_dir
from .spec import ModelSpec, detect_spec
from .task import resolve_task

if TYPE_CHECKING:
    from .rerank_reference import RerankReference

DTYPES = ("fp32", "fp16")
ATTENTION = ("auto", "fused", "eager", "both")


@dataclass(frozen=True)
class ExportOptions:
    dtypes: tuple[str, ...] = ("fp32", "fp16")
    max_length: int | None = None
    opset: int = 20
    name: str | None = None
    with_hidden_states: bool = False
    revision: str | None = None
    overwrite: bool = False
    # auto: the fused graph as default plus its eager twin where the family is covered, else eager;
    # fused / eager: that graph alone; both: as auto, but fail where fused is not available.
    attention: str = "auto"
    task: str = "auto"  # auto | embed | rerank; auto: read from the checkpoint (task.py)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from embedrt import __version__

    return {"embedrt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _ort_runner(path: Path) -> Callable[[parity.Encoded], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(enc: parity.Encoded) -> np.ndarray:
        return session.run(["sentence_embedding"], {"input_ids": enc.input_ids,
                                                    "attention_mask": enc.attention_mask})[0]

    return run


def _forms(spec: ModelSpec, attention: str) -> tuple[str, ...]:
    """Which graphs to export, the default one first: ("fused", "eager"), ("fused",) or ("eager",)."""
    if attention not in ATTENTION:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION)} (got {attention!r})")
    if spec.fused_ops is None:
        if attention in ("fused", "both"):
            raise ExportError(f"the fused graph is not available for {spec.model_type} models yet; "
                              "use --attention eager (or auto)")
        return ("eager",)
    return {"auto": ("fused", "eager"), "both": ("fused", "eager"), "fused": ("fused",),
            "eager": ("eager",)}[attention]


def export_model(
    model: str | Path, out: str | Path, options: ExportOptions = ExportOptions(), log: Callable[[str], None] = print
) -> Manifest:
    """Export ``model`` (local directory or hub id) to the artefact directory ``out``."""
    model = str(model)
    bad = [d for d in options.dtypes if d not in DTYPES]
    if bad or not options.dtypes:
        raise ExportError(f"--dtype must be among {', '.join(DTYPES)} (got {', '.join(bad) or 'nothing'})")
    started = time.perf_counter()
    # The output first: an unusable --out must fail before hours of export work, not after them.
    with staging_dir(Path(out), options.overwrite) as stage:
        manifest = _export(stage, model, options, log, started)
    log(f"wrote {Path(out)} in {time.perf_counter() - started:.1f} s")
    return manifest


def _export(stage: Path, model: str, options: ExportOptions, log: Callable[[str], None], started: float) -> Manifest:
    model_dir, revision = resolve_model_dir(model, options.revision)
    task = resolve_task(model, model_dir, options.task)
    spec = _spec(model_dir, options.max_length, task)
    forms = _forms(spec, options.attention)
    if task == "rerank" and options.with_hidden_states:
        raise ExportError("--with-hidden-states is for embedding models; a reranker's graph outputs scores")
    what = f"pooling {spec.pooling}" if task == "embed" else f"reranker, {_describe(spec)}"
    log(f"model: {model_dir} ({spec.architecture}, hidden {spec.hidden_size}, {what}, "
        f"max length {spec.max_length}); graphs: {' + '.join(forms)} attention")
    ref, gate = _reference(model_dir, spec, options.dtypes, log)

    written: dict[str, dict[str, GraphFile]] = {}
    for form in forms:
        main = None if form == forms[0] else written[forms[0]]
        written[form] = _export_form(stage, ref, spec, options, form, gate, main, log)
    ref.model = None
    gc.collect()
    if "fp32" not in options.dtypes:  # FP32 was only the source of the FP16 conversion
        for form_graphs in written.values():
            fp32 = form_graphs.pop("fp32")
            (stage / fp32.file).unlink()
            own = stage / f"{fp32.file}.data"
            own.unlink(missing_ok=True)
    graphs = written[forms[0]]
    twins = written.get("eager", {}) if forms[0] != "eager" else {}
    names = sorted({n for g in [*graphs.values(), *twins.values()] for n in (g.file, *g.external_data)})
    files = checksums(stage, names)
    graphs = {k: replace(g, sha256=files[g.file]) for k, g in graphs.items()}
    twins = {k: replace(g, sha256=files[g.file]) for k, g in twins.items()}
    for name in spec.tokenizer_files:
        shutil.copy2(model_dir / name, stage / name)
    files.update(checksums(stage, list(spec.tokenizer_files)))
    manifest = _manifest(spec, options, model, model_dir, revision, graphs, files, started, forms)
    manifest = replace(manifest, eager_graphs=twins)
    (stage / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _spec(model_dir: Path, max_length: int | None, task: str) -> ModelSpec:
    try:
        return detect_spec(model_dir, max_length, task)
    except (KeyError, TypeError, ValueError) as exc:  # a config.json field missing or of the wrong type
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ExportError(f"the configuration in {model_dir} does not describe a usable model ({detail}); "
                          "fix config.json or re-save the checkpoint with save_pretrained()") from exc


def _describe(spec: ModelSpec) -> str:
    assert spec.rerank is not None
    if spec.rerank.label_token_ids:
        return "score = sigmoid(logit(yes) - logit(no)) at the last token"
    return f"score = {spec.rerank.activation}(classifier logit)"


class Gate(Protocol):
    """A parity gate: embedders' (cosine, ``_Gate``) or rerankers' (score, ``rerank_parity.RerankGate``)."""

    def measure(self, path: Path, precision: str, sides: Sequence[str]) -> dict[str, Any]: ...

    def check(self, report: dict[str, Any]) -> None: ...


def _reference(model_dir: Path, spec: ModelSpec, dtypes: Sequence[str],
               log: Callable[[str], None]) -> tuple[Reference | RerankReference, Gate]:
    """The PyTorch model (traced by ``_trace``) and the parity gate built on it, for the spec's task."""
    if spec.task == "rerank":
        from .rerank_parity import RerankGate
        from .rerank_reference import RerankReference

        rerank_ref = RerankReference(model_dir, spec)
        return rerank_ref, RerankGate.prepare(rerank_ref, model_dir, log, fp16="fp16" in dtypes)
    ref = Reference(model_dir, spec)
    texts = parity.parity_texts(lambda t: spec.prompts.format_query(t))
    texts.append(parity.long_text(ref.count_tokens, spec.max_length))
    long_index = len(texts) - 1
    ref.check_runtime_tokenizer(model_dir, texts)
    log(f"reference: PyTorch FP32 on {len(texts)} parity texts")
    reference = ref.embed_alone(texts)
    return ref, _Gate(texts, reference, ref.tokenize, long_index, log)


@dataclass(frozen=True)
class _Gate:
    """The parity gate of one export: fixed texts, their PyTorch references, the reference tokenizer."""

    texts: list[str]
    reference: np.ndarray
    tokenize: parity.Tokenize
    long_index: int
    log: Callable[[str], None]

    def measure(self, path: Path, precision: str, sides: Sequence[str]) -> dict[str, Any]:
        report = parity.measure(self.texts, self.reference, self.tokenize, _ort_runner(path), precision,
                                self.long_index, sides)
        self.log(f"parity: {precision} {path.name} vs PyTorch FP32: min cosine {report['min_cosine']:.7f} (threshold "
                 f"{report['threshold_min_cosine']}), mean {report['mean_cosine']:.7f}")
        return report

    @staticmethod
    def check(report: dict[str, Any]) -> None:
        parity.check(report)


def _trace(ref: Reference | RerankReference, spec: ModelSpec, options: ExportOptions, form: str,
           log: Callable[[str], None]):
    import torch

    from .rerank_wrapper import OUTPUTS, rerank_graph
    from .wrapper import EmbeddingGraph

    opset = fused.OPSET if form == "fused" else options.opset
    # SDPA is what the exporter's fusions recognise as attention; eager exports plain MatMul / Softmax.
    ref.model.set_attn_implementation("sdpa" if form == "fused" else "eager")
    log(f"exporting the {form} graph with torch.onnx (dynamo, opset {opset})")
    vocab = int(ref.model.config.vocab_size)
    if spec.rerank is not None:
        graph = rerank_graph(ref.model, spec.rerank.label_token_ids, spec.rerank.activation).eval()
        with torch.no_grad():
            proto = onnx_export.export_graph(graph, vocab, opset, False, spec.inputs, OUTPUTS)
    else:
        graph = EmbeddingGraph(ref.model, spec.pooling, spec.normalize, options.with_hidden_states).eval()
        with torch.no_grad():
            proto = onnx_export.export_graph(graph, vocab, opset, options.with_hidden_states)
    ref.model.set_attn_implementation("eager")
    if form == "fused":
        assert spec.fused_ops is not None
        before = len(proto.graph.node)
        fused.fuse(proto, spec.fused_ops, spec.causal)
        counts = ", ".join(f"{n} {op}" for op, n in fused.op_counts(proto).items())
        log(f"  fused: {before} -> {len(proto.graph.node)} nodes ({counts})")
    return proto


def _export_form(stage: Path, ref: Reference | RerankReference, spec: ModelSpec, options: ExportOptions, form: str,
                 gate: Gate, main: dict[str, GraphFile] | None, log: Callable[[str], None]) -> dict[str, GraphFile]:
    """Trace one form (fused / eager), write its FP32 and FP16 graphs and gate each; ``main``: the
    default form's graphs, whose weights this one shares."""
    import onnx

    from ..fp16 import convert_to_fp16

    suffix = "" if main is None else f".{form}"
    fused_form = form == "fused"
    sides = ("right",) if fused_form and spec.causal else spec.padding_sides
    extra: dict[str, Any] = {"attention": form, "padding_side": "right" if fused_form and spec.causal else None}
    proto = _trace(ref, spec, options, form, log)
    if fused_form:
        extra["ops"] = fused.op_counts(proto)
    graphs: dict[str, GraphFile] = {}
    fp32_path = stage / f"model.fp32{suffix}.onnx"
    side = onnx_export.save(proto, fp32_path, share_with=stage / main["fp32"].file if main else None)
    del proto
    gc.collect()
    report = gate.measure(fp32_path, "fp32", sides)
    gate.check(report)
    graphs["fp32"] = GraphFile(file=fp32_path.name, precision="fp32", sha256="", external_data=side,
                               parity=report, **extra)
    if "fp16" not in options.dtypes:
        return graphs
    fp16_path = stage / f"model.fp16{suffix}.onnx"
    # The fused graph tries the lean FP16 plan first (norms and residual stream in FP16; ONNX Runtime's
    # RMSNormalization accumulates in FP32) and falls back to the full FP32 islands if the gate says so.
    plans = ("lean", "full") if fused_form else ("full",)
    for i, plan in enumerate(plans):
        log(f"converting to FP16 ({plan} FP32 islands: {ISLANDS[plan]})")
        proto = convert_to_fp16(onnx.load(str(fp32_path), load_external_data=True), plan)
        for stale in (fp16_path, fp16_path.with_name(f"{fp16_path.name}.data")):
            stale.unlink(missing_ok=True)
        side16 = onnx_export.save(proto, fp16_path, share_with=stage / main["fp16"].file if main else None)
        del proto
        gc.collect()
        report = gate.measure(fp16_path, "fp16", sides)
        if report["passed"] or i == len(plans) - 1:
            break
        log(f"  the {plan} FP16 plan misses the gate; keeping more in FP32")
    gate.check(report)
    report = {**report, "fp32_islands": plan}
    graphs["fp16"] = GraphFile(file=fp16_path.name, precision="fp16", sha256="", external_data=side16,
                               parity=report, **extra)
    return graphs


ISLANDS = {
    "lean": "rotary angles, pooling",
    "full": "norms, residual stream, rotary, softmax, pooling",
}


def _manifest(spec: ModelSpec, options: ExportOptions, model: str, model_dir: Path, revision: str | None,
              graphs: dict[str, GraphFile], files: dict[str, str], started: float, forms: tuple[str, ...]) -> Manifest:
    if spec.task == "rerank":
        outputs = [TensorSpec("score", "float32", ("batch",)), TensorSpec("logit", "float32", ("batch",))]
    else:
        outputs = [TensorSpec("sentence_embedding", "float32", ("batch", spec.hidden_size)),
                   TensorSpec("embedding_norm", "float32", ("batch",))]
    if options.with_hidden_states:
        outputs.append(TensorSpec("last_hidden_state", "float32", ("batch", "sequence", spec.hidden_size)))
    name = options.name or Path(model.rstrip("/")).name.lower()
    return Manifest(
        name=name,
        architecture=spec.model_type,
        hidden_size=spec.hidden_size,
        max_length=spec.max_length,
        pooling=spec.pooling,  # type: ignore[arg-type]
        normalize=spec.normalize,
        padding_side="right",
        pad_token_id=spec.pad_token_id,
        end_of_text=spec.end_of_text,
        prompts=spec.prompts,
        matryoshka=spec.matryoshka,
        inputs=tuple(TensorSpec(name, "int64", ("batch", "sequence")) for name in spec.inputs),
        outputs=tuple(outputs),
        task=spec.task,
        rerank=spec.rerank,
        graphs=graphs,
        tokenizer_files=spec.tokenizer_files,
        source={"model": model, "revision": revision, "content_sha256": content_hash(model_dir),
                "architecture": spec.architecture},
        export={"exporter": "torch.onnx.export(dynamo=True)", "opset": options.opset,
                "attn_implementation": "eager", "attention": list(forms),
                **({"fused_opset": fused.OPSET} if "fused" in forms else {}),
                "causal": spec.causal, "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1)},
        files=files,
    )
