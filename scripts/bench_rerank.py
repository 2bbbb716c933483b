"""Reranking 100 documents of 100-500 tokens against one query: embedrt vs transformers, same pairs, same run.

    python scripts/bench_rerank.py [--layers 4] [--threads 2] [--rounds 7] [--work build/bench-rerank] [--no-docs]

Builds a random Qwen3-Reranker of the 0.6B width (hidden 1024, 16 / 8 heads, vocab 151669) with --layers
layers, exports it (`embedrt export --task rerank --dtype fp32`), makes 100 documents of 100 to 500
tokens and one query, then times in separate processes, one after the other, with --threads threads:

- embedrt: `Reranker.rerank(query, documents)` on ONNX Runtime CPU FP32 (the fused graph, and its eager twin);
- transformers: the Qwen3-Reranker model card's method (AutoModelForCausalLM FP32 with SDPA, the card's
  prompt and truncation, left padding, yes / no logits at the last position), documents sorted by length
  and batched 16 at a time, as a careful user would; `torch.inference_mode`. Twice: as the card writes it
  (`model(**inputs).logits`: the whole LM head at every position), and with `logits_to_keep=1` (the last
  position only), what a user who knows transformers well would pass.

Each side reports the median (p50) of --rounds whole-request latencies after one warm-up, pairs/s from
it, and its scores; the script prints the largest score difference between the two. Writes the "rerank"
section of docs/benchmarks.md unless --no-docs. INT8 is not measured: `embedrt quantize` does not take
rerankers yet (it refuses them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import cpu_name, write_section

QUERY = "what is the capital of France and how large is it?"
PEER_BATCH = 16


def _documents(tokenizer_json: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` documents of 100 to 500 tokens (uniform), from the tokenizer's training sentences."""
    from tokenizers import Tokenizer

    from embedrt_export.testing.synthetic import CORPUS

    tok = Tokenizer.from_file(str(tokenizer_json))
    rng = np.random.default_rng(seed)
    words = " ".join(CORPUS).split()
    docs = []
    for _ in range(count):
        target = int(rng.integers(100, 501))
        text: list[str] = []
        while len(tok.encode(" ".join(text), add_special_tokens=False).ids) < target:
            text.append(words[int(rng.integers(len(words)))])
        docs.append(" ".join(text))
    return docs


def _time(call, rounds: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    result = call()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _embedrt(art: Path, docs: list[str], threads: int, rounds: int, attention: str) -> dict:
    from embedrt import BackendConfig, Reranker

    config = BackendConfig(intra_op_threads=threads, attention=attention)
    with Reranker.load(art, "onnxruntime", precision="fp32", backend_config=config) as reranker:
        p50, results = _time(lambda: reranker.rerank(QUERY, docs), rounds)
    scores = [0.0] * len(docs)
    for r in results:  # type: ignore[attr-defined]
        scores[r.index] = float(r.score)
    return {"p50_s": p50, "scores": scores}


def _transformers(model: Path, docs: list[str], threads: int, rounds: int, last_only: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    # The model card's prompt, verbatim.
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_ids = tok.encode(prefix, add_special_tokens=False)
    suffix_ids = tok.encode(suffix, add_special_tokens=False)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    max_length = 1024
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))

    def run() -> list[float]:
        scores = [0.0] * len(docs)
        with torch.inference_mode():
            for start in range(0, len(order), PEER_BATCH):
                chunk = order[start:start + PEER_BATCH]
                pairs = [f"<Instruct>: {instruction}\n<Query>: {QUERY}\n<Document>: {docs[i]}" for i in chunk]
                enc = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                          max_length=max_length - len(prefix_ids) - len(suffix_ids))
                enc["input_ids"] = [prefix_ids + ids + suffix_ids for ids in enc["input_ids"]]
                batch = tok.pad(enc, padding=True, return_tensors="pt")
                extra = {"logits_to_keep": 1} if last_only else {}
                logits = lm(**batch, **extra).logits[:, -1, :]
                pair = torch.stack([logits[:, no], logits[:, yes]], dim=1)
                probs = torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()
                for i, p in zip(chunk, probs.tolist(), strict=True):
                    scores[i] = p
        return scores

    p50, scores = _time(run, rounds)
    return {"p50_s": p50, "scores": scores}


def _worker(args: argparse.Namespace) -> int:
    docs = json.loads(Path(args.docs).read_text())
    if args.worker.startswith("transformers"):
        out = _transformers(Path(args.model), docs, args.threads, args.rounds, args.worker == "transformers-last")
    else:
        out = _embedrt(Path(args.art), docs, args.threads, args.rounds, args.worker.split("-", 1)[1])
    print(json.dumps(out))
    return 0


def _side(name: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", str(work / "model"), "--art", str(work / "art"),
           "--docs", str(work / "docs.json"), "--threads", str(args.threads), "--rounds", str(args.rounds)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--work", default="build/bench-rerank")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--art", help=argparse.SUPPRESS)
    parser.add_argument("--docs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    from embedrt_export.testing.rerankers import make_qwen3_reranker
    from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    make_qwen3_reranker(work / "model", replace(QWEN3_06B_SHAPE, num_hidden_layers=args.layers, seed=3))
    subprocess.run([sys.executable, "-m", "embedrt.cli", "export", str(work / "model"), "--out", str(work / "art"),
                    "--task", "rerank", "--dtype", "fp32", "--max-length", "1024", "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    docs = _documents(work / "model" / "tokenizer.json", 100)
    (work / "docs.json").write_text(json.dumps(docs))
    sides = {name: _side(name, args, work) for name in ("embedrt-fused", "embedrt-eager", "transformers-last",
                                                         "transformers")}
    peer = np.array(sides["transformers"]["scores"])
    rows = []
    for name, side in sides.items():
        delta = float(np.abs(np.array(side["scores"]) - peer).max())
        rows.append((name, side["p50_s"], len(docs) / side["p50_s"], sides["transformers"]["p50_s"] / side["p50_s"],
                     delta))
        print(f"{name:15s} p50 {side['p50_s'] * 1000:8.1f} ms  {len(docs) / side['p50_s']:7.1f} pairs/s  "
              f"{rows[-1][3]:.2f}x transformers  max |score delta| {delta:.2e}")
    if not args.no_docs:
        write_section("rerank", _section(args, rows))
    return 0


def _section(args: argparse.Namespace, rows: list[tuple[str, float, float, float, float]]) -> str:
    lines = ["<!-- rerank:begin -->", "## Reranking on CPU (scripts/bench_rerank.py)", "",
             f"{date.today().isoformat()}; {cpu_name()}, {args.threads} threads; Python {platform.python_version()}. "
             f"A random Qwen3-Reranker of the 0.6B width with {args.layers} layers (vocab 151669), FP32; one query "
             "against 100 documents of 100-500 tokens (uniform), one whole rerank request per round, median of "
             f"{args.rounds} after a warm-up; each side in its own process. transformers: the model card's method "
             f"with SDPA, documents sorted by length, batches of {PEER_BATCH}; transformers-last: the same with "
             "`logits_to_keep=1` (the LM head at the last position only, not at every position as the card's "
             "code computes it). Ratios are against the card's method.", "",
             "| side | p50 per request (ms) | pairs/s | vs transformers | max abs score difference vs transformers |",
             "| --- | --- | --- | --- | --- |"]
    for name, p50, pairs, ratio, delta in rows:
        lines.append(f"| {name} | {p50 * 1000:.0f} | {pairs:.1f} | {ratio:.2f}x | {delta:.1e} |")
    lines += ["", "INT8 is not measured: `embedrt quantize` refuses rerankers for now. No GPU rows: no device was "
              "lent.", "<!-- rerank:end -->", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
