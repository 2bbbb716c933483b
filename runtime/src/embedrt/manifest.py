"""The artefact manifest: everything the runtime needs to know about a model, as data.

``manifest.json`` is written by ``embedrt export`` and trusted alone by the runtime: pooling kind,
padding side, prompt templates, Matryoshka range, graph files and their checksums. Model specifics
live here, not in branches of the runtime's code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ArtefactError
from .prompts import PairPrompt, Prompts

SCHEMA_VERSION = 2  # 2: the task (embed / rerank); version 1 manifests are embedders and read as such
READABLE_SCHEMA_VERSIONS = (1, 2)
TASKS: tuple[str, ...] = ("embed", "rerank")
# Graph outputs each task's head reads (manifest ``outputs`` lists them with dtypes and shapes).
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {"embed": ("sentence_embedding", "embedding_norm"),
                                            "rerank": ("score", "logit")}
MANIFEST_NAME = "manifest.json"

Pooling = Literal["last_token", "mean", "cls"]
Precision = Literal["fp32", "fp16", "int8", "int8-cpu"]  # int8-cpu: ONNX Runtime dynamic INT8, CPU only
POOLINGS: tuple[str, ...] = ("last_token", "mean", "cls")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-cpu")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[str | int, ...]


def _make_hint(precision: str) -> str:
    """How to get a graph of ``precision``: only commands and flags that exist."""
    if precision in ("fp32", "fp16"):
        return f"make one with `embedrt export MODEL --dtype {precision}`"
    if precision in ("int8", "int8-cpu"):
        return "make one with `embedrt quantize ARTEFACT`"
    return ("embedrt makes fp32, fp16, int8, int8-cpu graphs (`embedrt export MODEL --dtype fp32,fp16`, then "
            "`embedrt quantize ARTEFACT`); pick one of these")


@dataclass(frozen=True)
class EndOfText:
    """How the pooled end-of-text token gets there. Never located by id: pad id may equal it."""

    token: str | None = None
    token_id: int | None = None
    appended_by_tokenizer: bool = False


@dataclass(frozen=True)
class GraphFile:
    """One ONNX graph of the artefact, with its external-data files (relative paths)."""

    file: str
    precision: Precision
    sha256: str
    external_data: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    # "fused": opset-23 Attention / RMSNormalization / RotaryEmbedding (docs/export.md); "eager": the
    # exporter's plain MatMul / Softmax attention. Manifests written before the fused graph: "eager".
    attention: str = "eager"
    # The only padding side the graph is exact for, or None for either. A causal graph whose attention
    # takes no mask (is_causal alone) is exact only when pads sit after the real tokens.
    padding_side: str | None = None
    ops: dict[str, int] = field(default_factory=dict)  # counts of the fused ops the export asserted


@dataclass(frozen=True)
class RerankSpec:
    """What the runtime needs to run a reranker: how pairs become input, and what the score is.

    The graph outputs ``logit`` (float32 ``[batch]``: Qwen3-Reranker's logit("yes") - logit("no") at
    the last real token; a cross-encoder's single logit) and ``score`` (``activation`` applied to it:
    "sigmoid", a probability in [0, 1]; "none", the logit itself).
    """

    prompt: PairPrompt
    activation: str = "sigmoid"  # "sigmoid" | "none"
    label_token_ids: dict[str, int] = field(default_factory=dict)  # Qwen3-Reranker: {"yes": id, "no": id}

    def __post_init__(self) -> None:
        if self.activation not in ("sigmoid", "none"):
            raise ArtefactError(f"unknown score activation {self.activation!r} (sigmoid, none); re-export")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankSpec:
        return cls(prompt=PairPrompt(**data["prompt"]), activation=data.get("activation", "sigmoid"),
                   label_token_ids={str(k): int(v) for k, v in data.get("label_token_ids", {}).items()})


@dataclass(frozen=True)
class Manifest:
    name: str
    architecture: str
    hidden_size: int
    max_length: int
    pooling: Pooling
    normalize: bool
    padding_side: Literal["left", "right"]
    pad_token_id: int
    end_of_text: EndOfText
    prompts: Prompts
    matryoshka: tuple[int, int] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    graphs: dict[str, GraphFile]
    tokenizer_files: tuple[str, ...]
    source: dict[str, Any]
    export: dict[str, Any]
    files: dict[str, str]  # relative path -> sha256, every file of the artefact but this one
    # Precision -> the eager-attention twin of ``graphs[precision]`` where that one is fused: for a
    # backend that cannot take the fused ops, and for users who ask for it (attention="eager").
    eager_graphs: dict[str, GraphFile] = field(default_factory=dict)
    task: str = "embed"  # "embed" | "rerank": which head reads the graph's outputs (TASK_OUTPUTS)
    rerank: RerankSpec | None = None  # with task "rerank"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ArtefactError(f"unknown task {self.task!r} (this embedrt knows {', '.join(TASKS)}); "
                                "upgrade embedrt or re-export the model")
        if (self.task == "rerank") != (self.rerank is not None):
            raise ArtefactError("a rerank manifest needs its rerank section, and only a rerank manifest has one; "
                                "re-export the model")
        names = {t.name for t in self.outputs}
        missing = [n for n in TASK_OUTPUTS[self.task] if n not in names]
        if missing:
            raise ArtefactError(f"the {self.task} graph must output {', '.join(missing)}; re-export the model")

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs, in order: input_ids, attention_mask [, token_type_ids]."""
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def dimensions_range(self) -> tuple[int, int]:
        return self.matryoshka if self.matryoshka else (self.hidden_size, self.hidden_size)

    def graph(self, precision: str, attention: str = "auto") -> GraphFile:
        """The graph of ``precision``; ``attention`` "auto" takes the default one (fused where exported),
        "eager" or "fused" insist on that form."""
        if precision not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise ArtefactError(f"this artefact has no {precision} graph (it has: {have}); {_make_hint(precision)}")
        if attention not in ("auto", "fused", "eager"):
            raise ArtefactError(f"attention must be auto, fused or eager (got {attention!r})")
        chosen = self.graphs[precision]
        if attention in ("auto", chosen.attention):
            return chosen
        twin = self.eager_graphs.get(precision)
        if attention == "eager" and twin is not None:
            return twin
        raise ArtefactError(
            f"this artefact's {precision} graph has {chosen.attention} attention and no {attention} twin; "
            f"re-export with `embedrt export MODEL --attention {attention}`"
            + (" (or `--attention both`)" if attention == "eager" else "")
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def with_graph(self, graph: GraphFile, files: dict[str, str]) -> Manifest:
        """A copy with one more (or a replaced) graph and updated file checksums."""
        from dataclasses import replace

        return replace(self, graphs={**self.graphs, graph.precision: graph}, files={**self.files, **files})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ArtefactError(
                f"manifest schema version {version!r} is not supported by this embedrt (it reads "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); "
                "re-export the model with this version of embedrt"
            )
        try:
            mrange = data["matryoshka"]
            return cls(
                name=data["name"],
                architecture=data["architecture"],
                hidden_size=int(data["hidden_size"]),
                max_length=int(data["max_length"]),
                pooling=data["pooling"],
                normalize=bool(data["normalize"]),
                padding_side=data["padding_side"],
                pad_token_id=int(data["pad_token_id"]),
                end_of_text=EndOfText(**data["end_of_text"]),
                prompts=Prompts.from_dict(data["prompts"]),
                matryoshka=(int(mrange[0]), int(mrange[1])) if mrange else None,
                inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"]),
                outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"]),
                graphs={k: _graph_file(g) for k, g in data["graphs"].items()},
                eager_graphs={k: _graph_file(g) for k, g in data.get("eager_graphs", {}).items()},
                task=data.get("task", "embed"),
                rerank=RerankSpec.from_dict(data["rerank"]) if data.get("rerank") else None,
                tokenizer_files=tuple(data["tokenizer_files"]),
                source=dict(data["source"]),
                export=dict(data["export"]),
                files=dict(data["files"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtefactError(f"manifest is malformed ({exc!r}); re-export the model") from exc


def _graph_file(data: dict[str, Any]) -> GraphFile:
    return GraphFile(**{**data, "external_data": tuple(data.get("external_data", ()))})


def load_manifest(artefact: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` of an artefact directory, or of the artefact at a URL (``remote``:
    only the manifest is read from there)."""
    from .remote import is_url, read_manifest  # remote imports this module

    if is_url(artefact):
        return read_manifest(str(artefact))
    path = Path(artefact)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise ArtefactError(f"{path} is not a directory; pass the directory `embedrt export` wrote")
    if not manifest_path.is_file():
        raise ArtefactError(
            f"{path} has no {MANIFEST_NAME}: not an embedrt artefact, or an export that did not finish; "
            "run `embedrt export MODEL --out DIR` again"
        )
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise ArtefactError(f"cannot read {manifest_path}: {exc}") from exc
    return parse_manifest(data, str(manifest_path))


def parse_manifest(data: bytes, where: str) -> Manifest:
    """The manifest in ``data`` (the bytes of ``where``), validated."""
    try:
        manifest = Manifest.from_dict(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"cannot read {where}: {exc}") from exc
    if manifest.pooling not in POOLINGS:
        raise ArtefactError(f"unknown pooling {manifest.pooling!r} in {where}")
    return manifest
