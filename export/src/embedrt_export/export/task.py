"""Which task a checkpoint is exported for: an embedder or a reranker.

``embedrt export --task`` decides when given. Otherwise the checkpoint's own files do, in this order:

1. a ``*ForSequenceClassification`` architecture is a cross-encoder: rerank;
2. a ``*ForCausalLM`` checkpoint is a reranker when its name says so ("reranker" in the MODEL argument,
   the directory's name or config.json's ``_name_or_path``: Qwen3-Reranker), an embedder when it ships
   sentence-transformers files (Qwen3-Embedding's config says ``Qwen3ForCausalLM`` too), and refused
   otherwise: a causal LM is neither by itself, and guessing would export a model that computes the
   wrong thing without failing any check;
3. anything else (``BertModel``, ``Qwen3Model``, ...) is an embedder, as before there were rerankers.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ExportError

TASK_CHOICES = ("auto", "embed", "rerank")
_SENTENCE_TRANSFORMERS_FILES = ("config_sentence_transformers.json", "modules.json")


def _config(model_dir: Path) -> dict:
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # resolve_model_dir has checked it; a broken one is reported there
    return data if isinstance(data, dict) else {}


def architecture(model_dir: Path) -> str:
    """The checkpoint's first ``architectures`` entry, or "" where config.json names none."""
    names = _config(model_dir).get("architectures") or [""]
    return str(names[0])


def named_reranker(model: str, model_dir: Path) -> bool:
    """True where the MODEL argument, the directory or config.json's ``_name_or_path`` says "reranker"."""
    names = (model, model_dir.name, str(_config(model_dir).get("_name_or_path", "")))
    return any("reranker" in name.lower() for name in names)


def resolve_task(model: str, model_dir: Path, requested: str = "auto") -> str:
    """"embed" or "rerank" for ``model`` (the argument as given) resolved to ``model_dir``."""
    if requested not in TASK_CHOICES:
        raise ExportError(f"--task must be one of {', '.join(TASK_CHOICES)} (got {requested!r})")
    if requested != "auto":
        return requested
    arch = architecture(model_dir)
    if arch.endswith("ForSequenceClassification"):
        return "rerank"
    if not arch.endswith("ForCausalLM"):
        return "embed"
    if named_reranker(model, model_dir):
        return "rerank"
    if any((model_dir / name).is_file() for name in _SENTENCE_TRANSFORMERS_FILES):
        return "embed"
    raise ExportError(
        f"{model_dir} is a {arch} checkpoint without sentence-transformers files and without \"reranker\" in its "
        "name, so it is not clear what to export: pass `--task embed` for an embedding model that pools the last "
        "token (as Qwen3-Embedding), or `--task rerank` for a yes/no reranker (as Qwen3-Reranker)"
    )
