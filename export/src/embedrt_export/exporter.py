"""``embedrt export``: checkpoint -> validated, self-describing ONNX artefact."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from embedrt.manifest import GraphFile, Manifest, TensorSpec

from . import onnx_export, parity
from .artefact import checksums, staging_dir
from .errors import ExportError
from .source import content_hash, resolve_model_dir
from .spec import ModelSpec, detect_spec

DTYPES = ("fp32", "fp16")


@dataclass(frozen=True)
class ExportOptions:
    dtypes: tuple[str, ...] = ("fp32", "fp16")
    max_length: int | None = None
    opset: int = 20
    name: str | None = None
    with_hidden_states: bool = False
    revision: str | None = None
    overwrite: bool = False


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from embedrt import __version__

    return {"embedrt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


class _Reference:
    """The PyTorch model with official pooling, and the tokenizer a user of it would run."""

    def __init__(self, model_dir: Path, spec: ModelSpec) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()

    def tokenize(self, texts: Sequence[str], side: str) -> parity.Encoded:
        self.tokenizer.padding_side = side
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.spec.max_length,
                             return_tensors="np")
        return parity.Encoded(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))

    def check_runtime_tokenizer(self, model_dir: Path, texts: Sequence[str]) -> None:
        """The runtime tokenizes with ``tokenizers`` from tokenizer.json; it must agree with transformers."""
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        fast.no_padding()
        fast.enable_truncation(self.spec.max_length)
        for i, text in enumerate(texts):
            want = self.tokenizer(text, truncation=True, max_length=self.spec.max_length)["input_ids"]
            if fast.encode(text).ids != list(want):
                raise ExportError(
                    f"tokenizer.json tokenizes parity text {i} ({text[:40]!r}) differently from transformers' "
                    "tokenizer for this model; the runtime would not match the reference. Re-save the tokenizer "
                    "with `AutoTokenizer.from_pretrained(...).save_pretrained(...)` and export again"
                )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def embed_alone(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from .wrapper import reference_pool

        rows = []
        with torch.no_grad():
            for text in texts:
                enc = self.tokenize([text], "right")
                ids, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
                kwargs = {"token_type_ids": torch.zeros_like(ids)} if self.spec.model_type != "qwen3" else {}
                hidden = self.model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
                pooled = reference_pool(hidden, mask, self.spec.pooling)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=-1)[0].numpy())
        return np.stack(rows).astype(np.float32)


def _ort_runner(path: Path) -> Callable[[parity.Encoded], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(enc: parity.Encoded) -> np.ndarray:
        return session.run(["sentence_embedding"], {"input_ids": enc.input_ids,
                                                    "attention_mask": enc.attention_mask})[0]

    return run


def export_model(
    model: str | Path, out: str | Path, options: ExportOptions = ExportOptions(), log: Callable[[str], None] = print
) -> Manifest:
    """Export ``model`` (local directory or hub id) to the artefact directory ``out``."""
    import torch

    model = str(model)
    bad = [d for d in options.dtypes if d not in DTYPES]
    if bad or not options.dtypes:
        raise ExportError(f"--dtype must be among {', '.join(DTYPES)} (got {', '.join(bad) or 'nothing'})")
    started = time.perf_counter()
    model_dir, revision = resolve_model_dir(model, options.revision)
    spec = detect_spec(model_dir, options.max_length)
    log(f"model: {model_dir} ({spec.architecture}, hidden {spec.hidden_size}, pooling {spec.pooling}, "
        f"max length {spec.max_length})")
    ref = _Reference(model_dir, spec)
    texts = parity.parity_texts(lambda t: spec.prompts.format_query(t))
    texts.append(parity.long_text(ref.count_tokens, spec.max_length))
    long_index = len(texts) - 1
    ref.check_runtime_tokenizer(model_dir, texts)
    log(f"reference: PyTorch FP32 on {len(texts)} parity texts")
    reference = ref.embed_alone(texts)

    from .wrapper import EmbeddingGraph

    log(f"exporting with torch.onnx (dynamo, opset {options.opset})")
    graph = EmbeddingGraph(ref.model, spec.pooling, spec.normalize, options.with_hidden_states).eval()
    with torch.no_grad():
        fp32_proto = onnx_export.export_graph(graph, int(ref.model.config.vocab_size), options.opset,
                                             options.with_hidden_states)
    del graph
    ref.model = None
    gc.collect()

    with staging_dir(Path(out), options.overwrite) as stage:
        graphs, files = _write_graphs(stage, fp32_proto, options.dtypes, log)
        del fp32_proto
        for precision, graph_file in list(graphs.items()):
            log(f"parity: {precision} ONNX vs PyTorch FP32")
            report = parity.measure(texts, reference, ref.tokenize, _ort_runner(stage / graph_file.file),
                                    precision, long_index, spec.padding_sides)
            log(f"  min cosine {report['min_cosine']:.7f} (threshold {report['threshold_min_cosine']}), "
                f"mean {report['mean_cosine']:.7f}")
            parity.check(report)
            graphs[precision] = GraphFile(**{**graph_file.__dict__, "parity": report})
        for name in spec.tokenizer_files:
            shutil.copy2(model_dir / name, stage / name)
        files.update(checksums(stage, list(spec.tokenizer_files)))
        manifest = _manifest(spec, options, model, model_dir, revision, graphs, files, started)
        (stage / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    log(f"wrote {Path(out)} in {time.perf_counter() - started:.1f} s")
    return manifest


def _write_graphs(stage: Path, fp32_proto, dtypes: tuple[str, ...], log) -> tuple[dict[str, GraphFile], dict[str, str]]:
    import onnx

    from .fp16 import convert_to_fp16

    graphs: dict[str, GraphFile] = {}
    files: dict[str, str] = {}
    fp32_path = stage / "model.fp32.onnx"
    side = onnx_export.save(fp32_proto, fp32_path)
    names = [fp32_path.name, *side]
    sums = checksums(stage, names)
    if "fp32" in dtypes:
        graphs["fp32"] = GraphFile(file=fp32_path.name, precision="fp32", sha256=sums[fp32_path.name],
                                   external_data=side)
        files.update(sums)
    if "fp16" in dtypes:
        log("converting to FP16 (FP32 islands: norms, residual stream, rotary, softmax, pooling)")
        proto = onnx.load(str(fp32_path), load_external_data=True)
        fp16_path = stage / "model.fp16.onnx"
        side16 = onnx_export.save(convert_to_fp16(proto), fp16_path)
        del proto
        sums16 = checksums(stage, [fp16_path.name, *side16])
        graphs["fp16"] = GraphFile(file=fp16_path.name, precision="fp16", sha256=sums16[fp16_path.name],
                                   external_data=side16)
        files.update(sums16)
    if "fp32" not in dtypes:
        for name in names:
            (stage / name).unlink()
    return graphs, files


def _manifest(spec: ModelSpec, options: ExportOptions, model: str, model_dir: Path, revision: str | None,
              graphs: dict[str, GraphFile], files: dict[str, str], started: float) -> Manifest:
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
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"))),
        outputs=tuple(outputs),
        graphs=graphs,
        tokenizer_files=spec.tokenizer_files,
        source={"model": model, "revision": revision, "content_sha256": content_hash(model_dir),
                "architecture": spec.architecture},
        export={"exporter": "torch.onnx.export(dynamo=True)", "opset": options.opset,
                "attn_implementation": "eager", "causal": spec.causal, "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1)},
        files=files,
    )
