"""Random-weight rerankers with offline tokenizers: a Qwen3-Reranker and a BERT cross-encoder.

Like ``synthetic``, these build real architectures through the real code paths, so that tests run
the export (and the runtime) exactly as on the published checkpoints, without the hub:

- ``make_qwen3_reranker``: a ``Qwen3ForCausalLM`` (tied embeddings) whose tokenizer has the chat
  tokens the Qwen3-Reranker prompt uses and single tokens "yes" and "no", and whose post-processor
  appends nothing (the base Qwen3 tokenizer's behaviour; only Qwen3-Embedding's appends a token).
- ``make_cross_encoder``: a ``BertForSequenceClassification`` with one label and a WordPiece
  tokenizer, as the MS MARCO cross-encoders are.

Random weights give logits near zero, where every score is about 0.5 and parity proves little; the
"yes" / "no" embedding rows and the classifier are drawn wider so that scores spread over (0, 1).
Name the Qwen3 directory so that it contains "reranker": that is how ``embedrt export`` tells a
reranker from a causal LM it cannot place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..export.rerank_spec import QWEN3_RERANK_PROMPT
from .synthetic import CORPUS, ENDOFTEXT, IM_END, IM_START, RandomQwen3Config, build_tokenizer, qwen3_config

THINK, END_THINK = "<think>", "</think>"
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The reranker prompt's own words, and "yes" / "no" as pieces of their own (after a newline, as the
# answer follows the prompt), so that the BPE learns each as one token.
RERANK_CORPUS = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: what\n"
    "<Document>: text",
    "system\nuser\nassistant\n",
    *(["yes\nno\n"] * 40),
]

_SAMPLE_PROMPT = (QWEN3_RERANK_PROMPT.prefix + QWEN3_RERANK_PROMPT.format_pair(
    "what is the capital of France?", "Paris is the capital and largest city of France.") + QWEN3_RERANK_PROMPT.suffix)


def make_qwen3_reranker(out_dir: str | Path, config: RandomQwen3Config = RandomQwen3Config(seed=3)) -> Path:
    """Write a random-weight Qwen3-Reranker-like checkpoint (``Qwen3ForCausalLM``) to ``out_dir``."""
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(min(config.vocab_size, 1024), RERANK_CORPUS, (THINK, END_THINK), append_end_of_text=False)
    names = (ENDOFTEXT, IM_START, IM_END, THINK, END_THINK, "yes", "no")
    ids: dict[str, int] = {name: i for name in names if (i := tok.token_to_id(name)) is not None}
    if len(ids) != len(names):
        raise RuntimeError(f"the reranker fixture tokenizer lacks a token it needs: {set(names) - set(ids)}")
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": config.max_position_embeddings,
        "padding_side": "left",  # the model card pads on the left
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(ids[name]): {"content": name, "special": name not in (THINK, END_THINK), "lstrip": False,
                             "rstrip": False, "normalized": False, "single_word": False}
            for name in (ENDOFTEXT, IM_START, IM_END, THINK, END_THINK)
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    torch.manual_seed(config.seed)
    hf_config = qwen3_config(config, ids, architectures=["Qwen3ForCausalLM"])
    model = Qwen3ForCausalLM(hf_config).eval()
    with torch.no_grad():
        embed = model.model.embed_tokens.weight  # tied: also the LM head's rows
        embed[ids[ENDOFTEXT]].normal_(0.0, hf_config.initializer_range)  # random init zeroes the pad row
        for name in ("yes", "no"):  # logit differences of a few units between pairs, at any width
            embed[ids[name]].normal_(0.0, 4.0 / config.hidden_size**0.5)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        _centre_yes_no(model, tok.encode(_SAMPLE_PROMPT, add_special_tokens=False).ids, ids["yes"], ids["no"])
    model.save_pretrained(out, safe_serialization=True)
    return out


def _centre_yes_no(model, prompt: list[int], yes: int, no: int) -> None:  # model: Qwen3ForCausalLM
    """Every prompt ends in the same suffix, so the last token's state differs little between pairs and a
    random yes - no row puts every score near 0 or 1 (a 0.6B-wide model: all below 0.02). Remove the row's
    component along that state for one typical prompt, so that scores spread around 0.5 instead."""
    import torch

    embed = model.model.embed_tokens.weight
    for _ in range(2):  # the prompt holds "no" itself, whose embedding this moves: a second pass settles it
        last = model.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]
        embed[no] += (last @ (embed[yes] - embed[no])) / (last @ last) * last


@dataclass(frozen=True)
class RandomCrossEncoderConfig:
    """Shape of a random BERT cross-encoder; the defaults make a model of a few hundred KiB."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 512
    seed: int = 4
    # What sentence-transformers' CrossEncoder applies to the logit, as a dotted class path written to
    # config.json (``sentence_transformers.activation_fn``); None: not written (its default: Sigmoid).
    activation_fn: str | None = None


def build_wordpiece_tokenizer():  # -> tokenizers.Tokenizer
    """A lower-casing BERT WordPiece tokenizer over the built-in corpus, with BERT's pair template.

    The vocabulary is built, not trained (tokenizers' WordPiece trainer orders it differently from run
    to run): the special tokens, every character alone and as a ``##`` continuation, every corpus word.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {w for line in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))}
    chars = sorted({c for w in words for c in w})
    tokens = [*WORDPIECE_SPECIALS, *chars, *(f"##{c}" for c in chars), *sorted(words - set(chars))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(list(WORDPIECE_SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def make_cross_encoder(out_dir: str | Path, config: RandomCrossEncoderConfig = RandomCrossEncoderConfig()) -> Path:
    """Write a random-weight ``BertForSequenceClassification`` (one label) cross-encoder to ``out_dir``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_wordpiece_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                        "model_max_length": config.max_position_embeddings, "pad_token": "[PAD]",
                        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
                        "tokenize_chinese_chars": True, "strip_accents": None}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    torch.manual_seed(config.seed)
    extra: dict[str, Any] = {"sentence_transformers": {"activation_fn": config.activation_fn}} \
        if config.activation_fn else {}
    hf_config = BertConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig keyword
        vocab_size=tok.get_vocab_size(),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        num_labels=1,
        initializer_range=0.2,  # wide weights: tokens mix, so logits differ by pair (0.02: all about equal)
        pad_token_id=tok.token_to_id("[PAD]"),
        architectures=["BertForSequenceClassification"],
        **extra,
    )
    model = BertForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.5)
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out, safe_serialization=True)
    return out
