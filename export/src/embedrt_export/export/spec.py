"""What kind of model a checkpoint is: read from its files, recorded as data.

sentence-transformers metadata wins where present (``modules.json``, ``1_Pooling/config.json``,
``config_sentence_transformers.json``, ``sentence_bert_config.json``); otherwise defaults per
``model_type``. Adding a model family means adding a row to ``_FAMILY_DEFAULTS``, not code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from embedrt.manifest import EndOfText, Prompts, RerankSpec

from ..errors import ExportError

QWEN3_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass(frozen=True)
class FamilyDefaults:
    pooling: str
    causal: bool
    matryoshka_min: int | None  # smallest Matryoshka size, None: full size only
    default_max_length: int
    query_template: str = "{text}"
    default_instruction: str | None = None
    # Padding sides that leave results unchanged. Absolute position embeddings (BERT family) shift
    # under left padding, in the reference model too, so only right padding is valid there.
    padding_sides: tuple[str, ...] = ("right",)
    # The fused opset-23 graph (fused.py): how many of each fused op one layer holds, and how many sit
    # outside the layers. None: the family is exported with eager attention only.
    fused_per_layer: tuple[tuple[str, int], ...] | None = None
    fused_extra: tuple[tuple[str, int], ...] = ()


# Qwen3 decoder layer: Attention; rotary on Q and K; RMSNorm before attention, on Q, on K, before
# the MLP. Outside the layers: the final norm.
_QWEN3_FUSED = (("Attention", 1), ("RotaryEmbedding", 2), ("RMSNormalization", 4))

_FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "qwen3": FamilyDefaults("last_token", True, 32, 8192, QWEN3_QUERY_TEMPLATE, QWEN3_DEFAULT_INSTRUCTION,
                            ("left", "right"),
                            _QWEN3_FUSED, (("RMSNormalization", 1),)),
    "bert": FamilyDefaults("mean", False, None, 512, fused_per_layer=(("Attention", 1),)),
    "xlm-roberta": FamilyDefaults("cls", False, None, 512),
    "roberta": FamilyDefaults("mean", False, None, 512),
    "mpnet": FamilyDefaults("mean", False, None, 512),
    "distilbert": FamilyDefaults("mean", False, None, 512),
}


@dataclass(frozen=True)
class ModelSpec:
    model_type: str
    architecture: str
    hidden_size: int
    max_length: int
    pooling: str
    normalize: bool
    causal: bool
    pad_token_id: int
    end_of_text: EndOfText
    prompts: Prompts
    matryoshka: tuple[int, int] | None
    tokenizer_files: tuple[str, ...]
    padding_sides: tuple[str, ...]
    layers: int = 0
    fused_ops: dict[str, int] | None = None  # op counts the fused graph must hold; None: not covered
    task: str = "embed"  # "embed" | "rerank" (task.py decides)
    rerank: RerankSpec | None = None  # with task "rerank" (rerank_spec.py)
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")  # graph inputs, in order


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pooling_from_st(model_dir: Path) -> tuple[str | None, bool | None]:
    """Pooling kind and normalisation declared by sentence-transformers files, if any."""
    modules = _read_json(model_dir / "modules.json")
    if not isinstance(modules, list):
        return None, None
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling = None
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            cfg = _read_json(model_dir / module.get("path", "1_Pooling") / "config.json") or {}
            assert isinstance(cfg, dict)
            for key, kind in (("pooling_mode_lasttoken", "last_token"), ("pooling_mode_cls_token", "cls"),
                              ("pooling_mode_mean_tokens", "mean")):
                if cfg.get(key):
                    pooling = kind
                    break
            else:
                raise ExportError(f"unsupported pooling in {model_dir / module.get('path', '')}: {cfg}")
    return pooling, normalize


def _query_prompt(model_dir: Path) -> tuple[str | None, str | None]:
    """(query template, default instruction) from a sentence-transformers "query" prompt like Qwen3's."""
    cfg = _read_json(model_dir / "config_sentence_transformers.json")
    prompt = cfg.get("prompts", {}).get("query") if isinstance(cfg, dict) else None
    if not prompt:
        return None, None
    if prompt.startswith("Instruct: ") and prompt.endswith("\nQuery:"):
        return QWEN3_QUERY_TEMPLATE, prompt[len("Instruct: "):-len("\nQuery:")]
    return prompt + "{text}", None


def detect_spec(model_dir: Path, max_length: int | None = None, task: str = "embed") -> ModelSpec:
    """Read a checkpoint directory and describe it (pooling, prompts, limits) as data, for ``task``."""
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise ExportError(f"{model_dir} has no readable config.json")
    model_type = str(config.get("model_type", ""))
    family = _FAMILY_DEFAULTS.get(model_type)
    if family is None:
        known = ", ".join(sorted(_FAMILY_DEFAULTS))
        raise ExportError(f"model_type {model_type!r} is not supported yet (supported: {known})")
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required by the runtime)")

    st_pooling, st_normalize = _pooling_from_st(model_dir)
    template, instruction = _query_prompt(model_dir)
    tok_cfg = _read_json(model_dir / "tokenizer_config.json") or {}
    st_cfg = _read_json(model_dir / "sentence_bert_config.json") or {}
    assert isinstance(tok_cfg, dict) and isinstance(st_cfg, dict)
    limit = int(config.get("max_position_embeddings", family.default_max_length))
    if model_type in ("roberta", "xlm-roberta"):
        limit -= 2  # position ids start after the padding index
    chosen = max_length or int(st_cfg.get("max_seq_length") or 0) or min(family.default_max_length, limit)
    if chosen > limit:
        raise ExportError(f"--max-length {chosen} exceeds the model's {limit} positions")

    hidden = int(config["hidden_size"])
    eot = _end_of_text(model_dir, family.causal) if task == "embed" else EndOfText()
    pad = tok_cfg.get("pad_token")
    pad_id = _token_id(model_dir, pad) if isinstance(pad, str) else config.get("pad_token_id")
    tokenizer_files = tuple(
        name
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                     "vocab.json", "merges.txt")
        if (model_dir / name).is_file()
    )
    architecture = (config.get("architectures") or [model_type])[0]
    spec = ModelSpec(
        model_type=model_type,
        architecture=architecture,
        hidden_size=hidden,
        max_length=chosen,
        pooling=st_pooling or family.pooling,
        normalize=True if st_normalize is None else st_normalize,
        causal=family.causal,
        pad_token_id=int(pad_id if pad_id is not None else 0),
        end_of_text=eot,
        prompts=Prompts(query=template or family.query_template, document="{text}",
                        default_instruction=instruction or family.default_instruction),
        matryoshka=(family.matryoshka_min, hidden) if family.matryoshka_min else None,
        tokenizer_files=tokenizer_files,
        padding_sides=family.padding_sides,
        layers=int(config.get("num_hidden_layers", 0)),
        fused_ops=_fused_ops(family, int(config.get("num_hidden_layers", 0))),
    )
    if task == "embed":
        return spec
    from .rerank_spec import rerank_fields

    return replace(spec, **rerank_fields(model_dir, config, model_type, architecture))


def _fused_ops(family: FamilyDefaults, layers: int) -> dict[str, int] | None:
    if family.fused_per_layer is None:
        return None
    from .fused import expected_ops

    return expected_ops(dict(family.fused_per_layer), dict(family.fused_extra), layers)


def _token_id(model_dir: Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id(token)


def _end_of_text(model_dir: Path, causal: bool) -> EndOfText:
    """For causal models, the token the post-processor appends (pooled by last-token pooling)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    encoding = tok.encode("a")
    bare = tok.encode("a", add_special_tokens=False)
    appended = len(encoding.ids) > len(bare.ids) and encoding.ids[-1] != bare.ids[-1]
    if causal and not appended:
        raise ExportError(
            "this tokenizer does not append an end-of-text token; last-token pooling would pool the last "
            "word instead. Use the tokenizer that ships with the embedding checkpoint"
        )
    if not appended:
        return EndOfText()
    token_id = encoding.ids[-1]
    return EndOfText(token=tok.id_to_token(token_id), token_id=token_id, appended_by_tokenizer=True)
