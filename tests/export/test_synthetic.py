"""The offline Qwen3 tokenizer fixture behaves like the real one in the ways that matter."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer


def test_appends_end_of_text_and_pad_equals_it(qwen3_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(qwen3_dir)
    ids = tok("hello world")["input_ids"]
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert ids[-1] == eot
    assert tok.pad_token_id == eot
    assert tok.eos_token_id != eot
    assert tok.eos_token == "<|im_end|>"


def test_truncation_keeps_the_appended_token(qwen3_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(qwen3_dir)
    ids = tok("a long sentence that will certainly be cut " * 10, truncation=True, max_length=7)["input_ids"]
    assert len(ids) == 7
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")


def test_end_of_text_row_is_not_zero(qwen3_dir: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(qwen3_dir)
    row = model.embed_tokens.weight[model.config.pad_token_id].detach()
    assert float(row.abs().sum()) > 0
