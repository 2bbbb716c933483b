"""What a reranker export is measured against: each model's own published scoring, in PyTorch FP32.

Written apart from the exported graph (``rerank_wrapper``), as its authors wrote it:

- Qwen3-Reranker, its model card: ``format_instruction``, ``process_inputs`` (the formatted middles
  tokenized with truncation to max_length - len(prefix) - len(suffix), then prefix ids + middle +
  suffix ids, padded on the left), ``compute_logits`` (the causal LM's full-vocabulary logits at the
  last position, log_softmax over [no, yes], exp of yes);
- cross-encoders: ``model(**tokenizer(query, document, truncation=True)).logits`` through the
  activation sentence-transformers' CrossEncoder applies.

Also the tokenization the runtime applies to a pair (``PairEncoder``, from tokenizer.json with the
``tokenizers`` library, as the manifest's ``PairPrompt`` describes it), which feeds the graph; the
export checks it yields the reference's ids, pair by pair.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedrt.prompts import PairPrompt

from ..errors import ExportError
from .reference import _first_line, load_weights
from .spec import ModelSpec


@dataclass(frozen=True)
class Pair:
    query: str
    document: str
    instruction: str | None = None  # None: the prompt's default (template encoding only)


@dataclass(frozen=True)
class Scored:
    """Reference results, one row per pair: score, logit, and the token ids (and type ids) scored."""

    scores: np.ndarray
    logits: np.ndarray
    ids: list[list[int]]
    type_ids: list[list[int]] | None


@dataclass(frozen=True)
class EncodedPairs:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None = None

    def feeds(self) -> dict[str, np.ndarray]:
        feeds = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            feeds["token_type_ids"] = self.token_type_ids
        return feeds


class RerankReference:
    """The PyTorch FP32 reranker, scoring as its model card / sentence-transformers do."""

    def __init__(self, model_dir: Path, spec: ModelSpec) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        assert spec.rerank is not None
        self.spec = spec
        self.rerank = spec.rerank
        template = spec.rerank.prompt.encoding == "template"
        try:  # the card loads its tokenizer with padding_side="left"
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left" if template else "right")
        except Exception as exc:
            raise ExportError(f"transformers cannot load the tokenizer in {model_dir}: {_first_line(exc)}") from exc
        auto = AutoModelForCausalLM if template else AutoModelForSequenceClassification
        # Every weight counts here, the cross-encoder's pooler and classifier included: none may be random.
        self._load = lambda: load_weights(lambda **kw: auto.from_pretrained(
            model_dir, attn_implementation="eager", dtype=torch.float32, **kw), model_dir, allow_missing=()).eval()
        self.model = self._load()
        if template:
            prompt = spec.rerank.prompt
            self.prefix_ids = self.tokenizer.encode(prompt.prefix, add_special_tokens=False)
            self.suffix_ids = self.tokenizer.encode(prompt.suffix, add_special_tokens=False)
            self.yes = self.tokenizer.convert_tokens_to_ids("yes")
            self.no = self.tokenizer.convert_tokens_to_ids("no")

    def format_instruction(self, pair: Pair) -> str:  # the card's, with its default instruction
        instruction = pair.instruction or self.rerank.prompt.default_instruction
        return f"<Instruct>: {instruction}\n<Query>: {pair.query}\n<Document>: {pair.document}"

    def process_inputs(self, pairs: Sequence[Pair]):  # -> transformers BatchEncoding
        max_length = self.spec.max_length
        inputs = self.tokenizer([self.format_instruction(p) for p in pairs], padding=False, truncation="longest_first",
                                return_attention_mask=False,
                                max_length=max_length - len(self.prefix_ids) - len(self.suffix_ids))
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_ids + ele + self.suffix_ids
        with warnings.catch_warnings():  # "max_length is ignored when padding=True": the card passes it anyway
            warnings.simplefilter("ignore")
            return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)

    def score(self, pairs: Sequence[Pair]) -> Scored:
        """``pairs`` scored together, as the card does (left padding for Qwen3)."""
        import torch

        with torch.no_grad():
            if self.rerank.prompt.encoding == "template":
                inputs = self.process_inputs(pairs)
                # logits_to_keep=1: the full-vocabulary logits of the last position only, which is all the
                # card reads; on a real checkpoint all positions would be 151,669 floats per token.
                batch_scores = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
                true_vector = batch_scores[:, self.yes]
                false_vector = batch_scores[:, self.no]
                batch_scores = torch.stack([false_vector, true_vector], dim=1)
                batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
                scores = batch_scores[:, 1].exp()
                logits = batch_scores[:, 1] - batch_scores[:, 0]  # = logit(yes) - logit(no)
                ids = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"],
                                                                       strict=True)]
                return Scored(scores.numpy().astype(np.float64), logits.numpy().astype(np.float64), ids, None)
            features = self.tokenizer([p.query for p in pairs], [p.document for p in pairs], padding=True,
                                      truncation=True, max_length=self.spec.max_length, return_tensors="pt")
            logits = self.model(**features).logits[:, 0]
            scores = torch.sigmoid(logits) if self.rerank.activation == "sigmoid" else logits
            mask = features["attention_mask"].bool()
            ids = [row[m].tolist() for row, m in zip(features["input_ids"], mask, strict=True)]
            types = ([row[m].tolist() for row, m in zip(features["token_type_ids"], mask, strict=True)]
                     if "token_type_ids" in features else None)
            return Scored(scores.numpy().astype(np.float64), logits.numpy().astype(np.float64), ids, types)

    def score_alone(self, pairs: Sequence[Pair]) -> Scored:
        """Each pair scored on its own (no padding): the reference every graph mode is compared with."""
        each = [self.score([pair]) for pair in pairs]
        types = [s.type_ids[0] for s in each if s.type_ids is not None]
        return Scored(np.concatenate([s.scores for s in each]), np.concatenate([s.logits for s in each]),
                      [s.ids[0] for s in each], types if len(types) == len(each) else None)


    def score_alone_fp16_weights(self, pairs: Sequence[Pair]) -> Scored:
        """``score_alone`` with the weights an FP16 graph stores in FP16 rounded to FP16, computed in FP32.

        What FP16 storage alone costs, whatever the graph computes: the floor under any FP16 graph's
        error. Rounded: every Linear and Embedding of the transformer body (the matrices the FP16 graph
        stores in FP16). Kept: norms, and the score head (the yes / no rows, a classifier and pooler),
        which the graph keeps in FP32; a head tied to the input embedding is untied first. The model
        is rounded in place and loaded again afterwards (no second copy in memory).
        """
        import gc

        import torch

        model = self.model
        head = model.get_output_embeddings() if self.rerank.prompt.encoding == "template" else None
        if head is not None and head.weight is model.get_input_embeddings().weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
        keep = {id(m) for name, m in model.named_modules() if "pooler" in name or "classifier" in name or m is head}
        with torch.no_grad():
            for module in model.modules():
                if id(module) in keep or not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    continue
                for param in module.parameters(recurse=False):
                    param.copy_(param.half().float())
        try:
            return self.score_alone(pairs)
        finally:
            model = head = module = None  # type: ignore[assignment]
            self.model = None  # free the rounded model before the FP32 one loads again
            gc.collect()
            self.model = self._load()


class PairEncoder:
    """A (query, document) pair -> graph input, as the runtime builds it from tokenizer.json and the
    manifest's ``PairPrompt``: template = prefix ids + middle (truncated) + suffix ids; text_pair =
    the tokenizer's own pair encoding, truncated longest first."""

    def __init__(self, tokenizer_json: Path, prompt: PairPrompt, max_length: int, pad_id: int,
                 token_types: bool) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.no_padding()
        self.counter = Tokenizer.from_file(str(tokenizer_json))
        self.counter.no_padding()
        self.counter.no_truncation()
        self.prompt = prompt
        self.pad_id = pad_id
        self.token_types = token_types
        if prompt.encoding == "template":
            self.tok.no_truncation()
            self.prefix = self.tok.encode(prompt.prefix, add_special_tokens=False).ids
            self.suffix = self.tok.encode(prompt.suffix, add_special_tokens=False).ids
            self.budget = max_length - len(self.prefix) - len(self.suffix)
        else:
            self.tok.enable_truncation(max_length, strategy="longest_first")

    def count(self, text: str) -> int:
        """Tokens in ``text`` alone, untruncated."""
        return len(self.counter.encode(text, add_special_tokens=False).ids)

    def encode(self, pair: Pair) -> tuple[list[int], list[int]]:
        if self.prompt.encoding == "template":
            middle = self.tok.encode(self.prompt.format_pair(pair.query, pair.document, pair.instruction),
                                     add_special_tokens=False).ids[: self.budget]
            ids = self.prefix + middle + self.suffix
            return ids, [0] * len(ids)
        enc = self.tok.encode(pair.query, pair.document)
        return list(enc.ids), list(enc.type_ids)

    def batch(self, pairs: Sequence[Pair], side: str) -> EncodedPairs:
        rows = [self.encode(p) for p in pairs]
        width = max(len(ids) for ids, _ in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, (row, type_row) in enumerate(rows):
            cut = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, cut], mask[i, cut], types[i, cut] = row, 1, type_row
        return EncodedPairs(ids, mask, types if self.token_types else None)
