"""Export a tiny random Qwen3, with PyTorch reference vectors, for tests that cannot export themselves.

    python scripts/make_test_artefact.py OUT

Writes OUT/artefact (FP32, max length 128) and OUT/reference.json (texts and their vectors from
transformers with the official pooling). `make test` runs this with the main environment, then
hands OUT/artefact to the torch-free environment's tests (tests/lean) through EMBEDRT_LEAN_ARTEFACT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from embedrt_export import ExportOptions, export_model
from embedrt_export.testing.synthetic import RandomQwen3Config, make_random_qwen3

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs. Быстрая лиса. 敏捷的棕色狐狸。🚀",
    "def add(a, b):\n    return a + b",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is rope?",
    "",
    "Embeddings map text to vectors; similar meanings land close together. " * 20,  # over max length
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_random_qwen3(Path(tmp) / "tiny-qwen3", RandomQwen3Config())
        export_model(str(model), args.out / "artefact", ExportOptions(
            dtypes=("fp32",), max_length=args.max_length, name="tiny-qwen3", overwrite=True), log=lambda _: None)
        vectors = reference_vectors(model, args.out / "artefact", TEXTS, args.max_length)
    reference = {"texts": TEXTS, "vectors": vectors.tolist()}
    (args.out / "reference.json").write_text(json.dumps(reference), encoding="utf-8")
    print(f"wrote {args.out / 'artefact'} and {args.out / 'reference.json'}")
    return 0


def reference_vectors(model_dir: Path, artefact: Path, texts: list[str], max_length: int) -> np.ndarray:
    """transformers FP32 with the official last-token pooling, one text at a time.

    Tokenized by transformers over the artefact's tokenizer.json as it is: for the synthetic
    tokenizer, AutoTokenizer would rebuild Qwen2's pre-tokenizer instead (see tests/runtime/test_parity.py).
    """
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    from embedrt_export.export.wrapper import reference_pool

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(artefact / "tokenizer.json"))
    net = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            pooled = reference_pool(net(**enc).last_hidden_state, enc["attention_mask"], "last_token")
            rows.append(torch.nn.functional.normalize(pooled, dim=-1)[0].numpy())
    return np.stack(rows)


if __name__ == "__main__":
    sys.exit(main())
