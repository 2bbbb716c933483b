"""The PyTorch model an export is measured against: its own weights, checked, and its own tokenizer.

transformers loads a checkpoint leniently (missing weights are filled at random and only logged) and
its tokenizer may differ from the ``tokenizer.json`` the runtime reads; both would let an export pass
parity against the wrong reference. So the reference refuses weights that do not cover the model,
checks the runtime's tokenizer against transformers' on the parity texts, and pools with each
family's official pooling (``wrapper.reference_pool``), written apart from the exported one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from . import parity
from .spec import ModelSpec


class Reference:
    """The PyTorch model with official pooling, and the tokenizer a user of it would run."""

    def __init__(self, model_dir: Path, spec: ModelSpec) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as exc:  # whatever transformers trips over in the user's files, said in one line
            raise ExportError(f"transformers cannot load the tokenizer in {model_dir}: {_first_line(exc)}") from exc
        self.model = load_weights(lambda **kw: AutoModel.from_pretrained(
            model_dir, attn_implementation="eager", dtype=torch.float32, **kw), model_dir).eval()

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


# Weights a checkpoint may lack or carry without changing the embedding: BERT's pooler (we pool
# last_hidden_state ourselves) and task heads of a *ForMaskedLM / *ForCausalLM / classifier checkpoint.
_UNUSED_MISSING = ("pooler.",)
_UNUSED_EXTRA = ("lm_head.", "cls.", "classifier.", "score.", "qa_outputs.", "pooler.")


def load_weights(load: Callable[..., Any], model_dir: Path, allow_missing: tuple[str, ...] = _UNUSED_MISSING) -> Any:
    """``load(**kw)`` is ``from_pretrained``; refuse a checkpoint whose weights do not cover the model.

    transformers fills missing weights with random values and only logs it: an export would pass
    parity (the reference has the same random weights) and ship a partly random model.
    ``allow_missing``: prefixes of weights the export does not use (BERT's pooler for an embedder).
    """
    # Quiet while loading: the load report (we say what matters in one line) and tensor-parallel
    # notes ("layers were not sharded"), which mean nothing for a single-device export.
    quiet = [logging.getLogger(f"transformers.{name}") for name in ("modeling_utils", "distributed.tensor_parallel")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        model, info = load(output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as exc:  # a missing weights file, an impossible config: one line, not a traceback
        raise ExportError(f"transformers cannot load the model in {model_dir}: {_first_line(exc)}") from exc
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    missing = sorted(k for k in info.get("missing_keys", ()) if not (allow_missing and k.startswith(allow_missing)))
    extra = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(_UNUSED_EXTRA))
    mismatched = sorted(f"{k[0]} (checkpoint {tuple(k[1])}, model {tuple(k[2])})" if isinstance(k, tuple) else str(k)
                        for k in info.get("mismatched_keys", ()))
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                for what, keys in (("weights missing from the checkpoint, which transformers would fill with "
                                    "random values", missing),
                                   ("checkpoint weights the model has no place for", extra),
                                   ("weights of the wrong shape", mismatched)) if keys]
    problems += [str(m) for m in info.get("error_msgs", ())]
    if problems:
        raise ExportError(f"the weights in {model_dir} do not match its config.json: {'; '.join(problems)}. "
                          "Check that config.json (num_hidden_layers, hidden_size, ...) belongs to these weights, "
                          "or re-save the checkpoint with save_pretrained()")
    return model


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:2]) or 'no message'}"
