"""Random-weight Qwen3 checkpoints with an offline tokenizer that behaves like the real one.

Used by the tests, the demo and the benchmarks: the hub cannot be reached here, so we build
checkpoints locally with the real architecture and the real code path. The tokenizer is a small
byte-level BPE trained on a built-in corpus; like Qwen3-Embedding's, its post-processor appends
``<|endoftext|>``, the pad token is that same token, and ``eos_token`` is ``<|im_end|>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# What the tokenizer is trained on; the benchmarks also draw their words from it.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation combines search with language models.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "Query: what is the capital of France? Paris is the capital and largest city of France.",
    "Embeddings map text to vectors; similar meanings land close together.",
    "def add(a, b):\n    return a + b\n\nclass Vector:\n    pass",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "SELECT id, name FROM users WHERE active = 1 ORDER BY name;",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。向量检索与语义搜索。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다.",
    "Emoji are text too: 🙂🚀🔥 and flags 🇫🇷 🇯🇵.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2026-11-22",
]


@dataclass(frozen=True)
class RandomQwen3Config:
    """Shape of a random Qwen3 checkpoint. The defaults make a model of a few hundred KiB."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    vocab_size: int = 1024
    seed: int = 0


# The geometry of Qwen/Qwen3-Embedding-0.6B with fewer layers: a realistic width for benchmarks.
QWEN3_06B_SHAPE = RandomQwen3Config(
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    max_position_embeddings=32768,
    vocab_size=151669,
)


# Qwen2/Qwen3's pre-tokenizer split, as in their tokenizer.json. transformers rebuilds Qwen2Tokenizer
# with exactly this (and NFC), so the fixture must use it too or the two split whitespace differently.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


def build_tokenizer(vocab_size: int, extra_corpus: Sequence[str] = (), added: Sequence[str] = (),
                    append_end_of_text: bool = True) -> Tokenizer:
    """Train a byte-level BPE on the built-in corpus and wire it like Qwen3's tokenizer.

    ``added``: ordinary added tokens after the special ones (Qwen3's ``<think>``, ``</think>``).
    ``append_end_of_text`` False: the post-processor appends nothing, as in the base Qwen3 tokenizer
    that Qwen3-Reranker ships (only Qwen3-Embedding's appends ``<|endoftext|>``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 3 - len(added),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4 + list(extra_corpus), trainer=trainer)
    tok.add_special_tokens([ENDOFTEXT, IM_START, IM_END])
    if added:
        tok.add_tokens(list(added))
    if not append_end_of_text:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok
    eot = tok.token_to_id(ENDOFTEXT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {ENDOFTEXT}:0",
        pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
        special_tokens=[(ENDOFTEXT, eot)],
    )
    return tok


def _write_tokenizer(out: Path, vocab_size: int, max_length: int) -> dict[str, int]:
    tok = build_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    ids: dict[str, int] = {}
    for name in (ENDOFTEXT, IM_START, IM_END):
        token_id = tok.token_to_id(name)
        assert token_id is not None  # build_tokenizer added it as a special token
        ids[name] = token_id
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": max_length,
        "padding_side": "left",
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": name, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for name, i in ids.items()
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids


def _write_sentence_transformers_files(out: Path, hidden: int, max_length: int) -> None:
    """The files Qwen3-Embedding ships for sentence-transformers: last-token pooling, query prompt."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
               "pooling_mode_lasttoken": True, "include_prompt": True}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    prompts = {
        "prompts": {
            "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
            "document": "",
        },
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
    )


def qwen3_config(config: RandomQwen3Config, ids: dict[str, int], **extra: Any) -> Any:  # -> Qwen3Config
    """The transformers config of a random Qwen3 of ``config``'s shape; ``ids``: the tokenizer's special tokens."""
    from transformers import Qwen3Config

    # rope_theta and torch_dtype are the names transformers 4.x takes; 5.x still accepts them (mapping them
    # to rope_parameters and dtype, which 4.x does not know) but no longer lists them in its signature.
    return Qwen3Config(  # type: ignore[call-arg]
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        torch_dtype="float32",
        **extra,
    )


def make_random_qwen3(out_dir: str | Path, config: RandomQwen3Config = RandomQwen3Config()) -> Path:
    """Write a random-weight Qwen3 checkpoint (safetensors + config + tokenizer) to ``out_dir``."""
    import torch
    from transformers import Qwen3Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_vocab = min(config.vocab_size, 1024)
    ids = _write_tokenizer(out, tokenizer_vocab, config.max_position_embeddings)
    torch.manual_seed(config.seed)
    hf_config = qwen3_config(config, ids)
    model = Qwen3Model(hf_config).eval()
    with torch.no_grad():
        # A random Qwen3Model zeroes the pad row; a trained one does not, and the pad id is the
        # appended end-of-text token we pool on, so give it values (else "" embeds to zero).
        model.embed_tokens.weight[ids[ENDOFTEXT]].normal_(0.0, hf_config.initializer_range)
        # Non-trivial norm weights so a mistake in the norms shows in parity.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out, safe_serialization=True)
    _write_sentence_transformers_files(out, config.hidden_size, config.max_position_embeddings)
    return out
