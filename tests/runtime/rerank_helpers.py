"""Tiny reranker tokenizers and manifests built here, and the model cards' own encodings (transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from embedrt.manifest import MANIFEST_NAME, Manifest
from embedrt.prompts import PairPrompt

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and largest city of France.",
    "what is the capital of France? Retrieval systems rank passages for a query.",
    "def add(a, b):\n    return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund. 敏捷的棕色狐狸 🚀🔥 café naïve",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    "<Instruct>: Given a web search query\n<Query>: q\n<Document>: d yes no system user assistant",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# The Qwen3-Reranker prompt (model card), as the export writes it into the manifest.
QWEN3_PROMPT = PairPrompt(
    encoding="template",
    prefix="<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
           'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n',
    template="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
)


def byte_level_tokenizer(append_end_of_text: bool = False) -> Tokenizer:
    """A small byte-level BPE wired like Qwen3's (``append_end_of_text``: like Qwen3-Embedding's)."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(QWEN_SPECIALS)
    if append_end_of_text:
        eot = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A:0 <|endoftext|>:0", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eot)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def wordpiece_tokenizer() -> Tokenizer:
    """A lower-casing BERT WordPiece tokenizer with BERT's pair template ([CLS] a [SEP] b [SEP], types 0 / 1)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
                                        show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def rerank_manifest(prompt: PairPrompt, max_length: int, pad_token_id: int = 0, token_types: bool = False,
                    padding_side: str = "left") -> Manifest:
    """A reranker manifest for tokenizer tests (its graph is never opened)."""
    seq = {"dtype": "int64", "shape": ["batch", "sequence"]}
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    data: dict[str, Any] = {
        "schema_version": 2, "name": "tiny-reranker", "architecture": "test", "hidden_size": 8,
        "max_length": max_length, "pooling": "last_token", "normalize": False, "padding_side": padding_side,
        "pad_token_id": pad_token_id, "end_of_text": {}, "prompts": {}, "matryoshka": None,
        "inputs": [{"name": n, **seq} for n in inputs],
        "outputs": [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in ("score", "logit")],
        "graphs": {}, "tokenizer_files": ["tokenizer.json"], "source": {}, "export": {}, "files": {},
        "task": "rerank", "rerank": {"prompt": prompt.__dict__, "activation": "sigmoid"},
    }
    return Manifest.from_dict(data)


def write_tokenizer_artefact(directory: Path, tok: Tokenizer, manifest: Manifest) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return directory


def card_template_ids(tok: Tokenizer, prompt: PairPrompt, max_length: int, pairs: list[tuple[str, str]],
                      instruction: str | None = None) -> list[list[int]]:
    """Qwen3-Reranker's model card, verbatim in method: prefix / suffix ids without special tokens,
    the formatted middle through the tokenizer (truncation longest_first to what they leave)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    prefix = hf.encode(prompt.prefix, add_special_tokens=False)
    suffix = hf.encode(prompt.suffix, add_special_tokens=False)
    middles = [prompt.template.format(instruction=instruction or prompt.default_instruction, query=q, document=d)
               for q, d in pairs]
    enc = hf(middles, padding=False, truncation="longest_first", return_attention_mask=False,
             max_length=max_length - len(prefix) - len(suffix))
    return [prefix + ids + suffix for ids in enc["input_ids"]]


def card_text_pair_ids(tok: Tokenizer, max_length: int,
                       pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """A cross-encoder's tokenization, as sentence-transformers' ``CrossEncoder`` calls it: a batch of
    queries and a batch of documents (so that an empty document is still the pair's second text)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    out = []
    for q, d in pairs:
        enc = hf([q], [d], truncation=True, max_length=max_length, return_token_type_ids=True)
        out.append((enc["input_ids"][0], enc["token_type_ids"][0]))
    return out



class Qwen3RerankerReference:
    """Qwen3-Reranker's model card in PyTorch FP32, one pair at a time: the formatted middle truncated
    to what the prompt leaves, prefix + middle + suffix ids, the causal LM's full logits at the last
    position, log_softmax over [no, yes], exp of yes. Also logit(yes) - logit(no), the runtime's logit."""

    def __init__(self, model_dir: Path, prompt: PairPrompt, max_length: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.prompt, self.max_length = prompt, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.prefix = self.tokenizer.encode(prompt.prefix, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(prompt.suffix, add_special_tokens=False)
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def __call__(self, pairs: list[tuple[str, str]], instruction: str | None = None) -> tuple[Any, Any]:
        import numpy as np
        import torch

        scores, logits = [], []
        for query, document in pairs:
            middle = self.prompt.template.format(instruction=instruction or self.prompt.default_instruction,
                                                 query=query, document=document)
            ids = self.tokenizer([middle], padding=False, truncation="longest_first", return_attention_mask=False,
                                 max_length=self.max_length - len(self.prefix) - len(self.suffix))["input_ids"][0]
            inputs = self.tokenizer.pad({"input_ids": [self.prefix + ids + self.suffix]}, padding=True,
                                        return_tensors="pt")
            with torch.inference_mode():
                last = self.model(**inputs).logits[:, -1, :]
            pair = torch.stack([last[:, self.no], last[:, self.yes]], dim=1)
            scores.append(torch.nn.functional.log_softmax(pair, dim=1)[0, 1].exp().item())
            logits.append((last[0, self.yes] - last[0, self.no]).item())
        return np.asarray(scores), np.asarray(logits)


class CrossEncoderReference:
    """A cross-encoder in PyTorch FP32, one pair at a time: ``model(**tokenizer([q], [d], truncation=True))``'s
    logit, and its sigmoid (sentence-transformers' default activation for one label)."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    def __call__(self, pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
        import numpy as np
        import torch

        logits = []
        for query, document in pairs:
            features = self.tokenizer([query], [document], truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
            with torch.inference_mode():
                logits.append(self.model(**features).logits[0, 0].item())
        out = np.asarray(logits)
        return 1 / (1 + np.exp(-out)), out
