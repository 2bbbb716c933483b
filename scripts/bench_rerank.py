"""Reranking 100 documents of 100-500 tokens against one query: embedrt vs its peers, same pairs, same run.

    python scripts/bench_rerank.py [--family both|qwen3|cross] [--layers 2] [--threads 2] [--rounds 3]
                                   [--work build/bench-rerank] [--no-docs]

Two families, each built with random weights, exported (`embedrt export --task rerank --dtype fp32`) and
quantized for the CPU (`embedrt quantize --target cpu`: the int8-cpu graph behind the ranking gate):

- qwen3: a Qwen3-Reranker of the 0.6B width (hidden 1024, 16 / 8 heads, vocab 151669) with --layers
  layers. Peers: the model card's method in transformers (AutoModelForCausalLM FP32 with SDPA, the card's
  prompt and truncation, left padding, yes / no logits at the last position), documents sorted by length
  and batched 16 at a time, `torch.inference_mode`; twice: as the card writes it (`model(**inputs).logits`,
  the whole LM head at every position) and with `logits_to_keep=1` (the fair peer).
- cross: a BERT cross-encoder of the shape of cross-encoder/ms-marco-MiniLM-L6-v2 (hidden 384, 6 layers,
  12 heads; a small WordPiece vocabulary). Peer: sentence-transformers' `CrossEncoder.predict` (FP32,
  its defaults, batch 32), as its users call it.

embedrt sides: `Reranker.rerank(query, documents)` on ONNX Runtime CPU, FP32 fused graph, its eager twin,
and INT8 (int8-cpu). Each side runs in its own process, one after the other, with --threads threads, and
reports the median (p50) of --rounds whole-request latencies after one warm-up, pairs/s from it, and its
scores; each row shows the largest score difference from the family's FP32 reference peer and, for INT8,
the Spearman rank correlation with embedrt FP32. Writes the "rerank" section of docs/benchmarks.md unless
--no-docs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import cpu_name, write_section

QUERY = "what is the capital of France and how large is it?"
PEER_BATCH = 16
MAX_LENGTH = {"qwen3": 1024, "cross": 512}
# Per family: its sides in run order, and the peer the ratios are taken against.
SIDES = {
    "qwen3": ("embedrt-fused", "embedrt-eager", "embedrt-int8", "transformers-last", "transformers"),
    "cross": ("embedrt-fused", "embedrt-eager", "embedrt-int8", "sentence-transformers"),
}
BASELINE = {"qwen3": "transformers-last", "cross": "sentence-transformers"}


def _documents(count_tokens: Callable[[str], int], count: int, seed: int = 0) -> list[str]:
    """``count`` documents of 100 to 500 tokens (uniform), from the fixture tokenizers' training sentences."""
    from embedrt_export.testing.synthetic import CORPUS

    rng = np.random.default_rng(seed)
    words = " ".join(CORPUS).split()
    docs = []
    for _ in range(count):
        target = int(rng.integers(100, 501))
        text: list[str] = []
        while count_tokens(" ".join(text)) < target:
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


def _embedrt(art: Path, docs: list[str], threads: int, rounds: int, form: str) -> dict:
    from embedrt import BackendConfig, Reranker

    precision = "int8" if form == "int8" else "fp32"
    config = BackendConfig(intra_op_threads=threads, attention="fused" if form == "int8" else form)
    with Reranker.load(art, "onnxruntime", precision=precision, backend_config=config) as reranker:
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
    max_length = MAX_LENGTH["qwen3"]
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


def _sentence_transformers(model: Path, docs: list[str], threads: int, rounds: int) -> dict:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    encoder = CrossEncoder(str(model), max_length=MAX_LENGTH["cross"], device="cpu")
    pairs = [(QUERY, d) for d in docs]
    p50, scores = _time(lambda: encoder.predict(pairs, show_progress_bar=False), rounds)
    return {"p50_s": p50, "scores": [float(s) for s in scores]}  # type: ignore[union-attr]


def _worker(args: argparse.Namespace) -> int:
    docs = json.loads(Path(args.docs).read_text())
    if args.worker.startswith("transformers"):
        out = _transformers(Path(args.model), docs, args.threads, args.rounds, args.worker == "transformers-last")
    elif args.worker == "sentence-transformers":
        out = _sentence_transformers(Path(args.model), docs, args.threads, args.rounds)
    else:
        out = _embedrt(Path(args.art), docs, args.threads, args.rounds, args.worker.split("-", 1)[1])
    print(json.dumps(out))
    return 0


def _side(name: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", str(work / "model"), "--art", str(work / "art"),
           "--docs", str(work / "docs.json"), "--threads", str(args.threads), "--rounds", str(args.rounds)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(family: str, layers: int, work: Path) -> None:
    """The random checkpoint, its FP32 export, its int8-cpu graph, and the 100 documents."""
    from tokenizers import Tokenizer

    from embedrt_export.testing.rerankers import RandomCrossEncoderConfig, make_cross_encoder, make_qwen3_reranker
    from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE

    work.mkdir(parents=True, exist_ok=True)
    if family == "qwen3":
        make_qwen3_reranker(work / "model", replace(QWEN3_06B_SHAPE, num_hidden_layers=layers, seed=3))
    else:  # ms-marco-MiniLM-L6-v2's shape
        make_cross_encoder(work / "model", RandomCrossEncoderConfig(hidden_size=384, num_hidden_layers=6,
                                                                    num_attention_heads=12, intermediate_size=1536))
    embedrt = [sys.executable, "-m", "embedrt.cli"]
    subprocess.run([*embedrt, "export", str(work / "model"), "--out", str(work / "art"), "--task", "rerank",
                    "--dtype", "fp32", "--max-length", str(MAX_LENGTH[family]), "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*embedrt, "quantize", str(work / "art"), "--target", "cpu"], check=True, stdout=subprocess.DEVNULL)
    tok = Tokenizer.from_file(str(work / "model" / "tokenizer.json"))
    docs = _documents(lambda text: len(tok.encode(text, add_special_tokens=False).ids), 100)
    (work / "docs.json").write_text(json.dumps(docs))


Row = tuple[str, str, float, float, float, float, str]


def _family(family: str, args: argparse.Namespace) -> list[Row]:
    from embedrt_export.quantize.ranking import spearman  # the ranking gate's own (ties share their mean rank)

    work = Path(args.work) / family
    _prepare(family, args.layers, work)
    sides = {name: _side(name, args, work) for name in SIDES[family]}
    base = sides[BASELINE[family]]
    reference = np.array(base["scores"])
    fp32 = np.array(sides["embedrt-fused"]["scores"])
    rows = []
    for name, side in sides.items():
        scores = np.array(side["scores"])
        delta = float(np.abs(scores - reference).max())
        rank = f"{spearman(fp32, scores):.4f}" if name == "embedrt-int8" else ""
        rows.append((family, name, side["p50_s"], 100 / side["p50_s"], base["p50_s"] / side["p50_s"], delta, rank))
        print(f"{family:6s} {name:22s} p50 {side['p50_s'] * 1000:8.1f} ms  {100 / side['p50_s']:7.1f} pairs/s  "
              f"{rows[-1][4]:.2f}x {BASELINE[family]}  max |score delta| {delta:.2e}  {rank}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("both", "qwen3", "cross"), default="both")
    parser.add_argument("--layers", type=int, default=2, help="Qwen3-Reranker layers (2: ~10 s a request here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="build/bench-rerank")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--art", help=argparse.SUPPRESS)
    parser.add_argument("--docs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    families = ("qwen3", "cross") if args.family == "both" else (args.family,)
    rows = [row for family in families for row in _family(family, args)]
    if not args.no_docs:
        write_section("rerank", _section(args, rows))
    return 0


def _section(args: argparse.Namespace, rows: list[Row]) -> str:
    lines = ["<!-- rerank:begin -->", "## Reranking on CPU (scripts/bench_rerank.py)", "",
             f"{date.today().isoformat()}; {cpu_name()}, {args.threads} threads; Python {platform.python_version()}. "
             "One query against 100 documents of 100-500 tokens (uniform), one whole rerank request per round, "
             f"median of {args.rounds} after a warm-up; each side in its own process. Random weights, real "
             f"architectures: qwen3 is a Qwen3-Reranker of the 0.6B width with {args.layers} layers (vocab 151669), "
             "max length 1024; cross is a BERT cross-encoder of ms-marco-MiniLM-L6-v2's shape, max length 512. "
             "embedrt: ONNX Runtime CPU, FP32 fused graph, its eager twin, and int8-cpu (`embedrt quantize "
             "--target cpu`, which passed its ranking gate). Peers: transformers with the model card's method "
             "(SDPA, documents sorted by length, batches of 16) as the card writes it (`transformers`: the LM head "
             "at every position) and with `logits_to_keep=1` (`transformers-last`, the ratio's baseline); "
             "sentence-transformers' `CrossEncoder.predict` with its defaults (the cross baseline). Score "
             "differences are against the baseline; Spearman: INT8's ranking of the 100 documents against "
             "embedrt FP32's.", "",
             "| model | side | p50 per request (ms) | pairs/s | vs baseline | max abs score difference vs baseline "
             "| Spearman vs FP32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for family, name, p50, pairs, ratio, delta, rank in rows:
        lines.append(f"| {family} | {name} | {p50 * 1000:.0f} | {pairs:.1f} | {ratio:.2f}x | {delta:.1e} | {rank} |")
    lines += ["", "No GPU rows: no device was lent.", "<!-- rerank:end -->", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
