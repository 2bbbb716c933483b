"""GPU benchmark: ONNX Runtime CUDA (fused / eager graphs, CUDA graphs, flash on / off) and the TensorRT
backend (FP16, INT8) against PyTorch FP16 + SDPA.

    python scripts/make_random_qwen3.py /tmp/q06/model --shape 0.6b
    embedrt export /tmp/q06/model --out /tmp/q06/art --max-length 512
    python scripts/bench_gpu.py --model /tmp/q06/model --artefact /tmp/q06/art --out build/bench/gpu.json

Same GPU, same process, same random token batches at each (rows x length) point. Reports tokens/s
and p50 latency per backend, GPU memory after load and at the largest point, the Memcpy nodes of the
CUDA-partitioned FP16 graph, and the targets: fused ORT CUDA FP16 >= 1.5x PyTorch FP16 at 32x512 (aim
2x), 1x32 p50 < 3 ms with CUDA graphs, <= 2 GB for the 0.6B FP16 model; FP16 engine >= 2x PyTorch
FP16 at 32x512, INT8 >= 1.3x FP16. Whether flash attention fired shows as the fused / fused-noflash
ratio (ORT_DISABLE_FLASH_ATTENTION=1 in the second). Builds the engines it needs for
this GPU first. Without an NVIDIA GPU it stops at once with exit status 2, saying why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

POINTS = ((1, 32), (8, 128), (32, 512), (64, 512))


def _batches(vocab: int, points: tuple[tuple[int, int], ...]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {(r, s): (rng.integers(1, vocab, (r, s)).astype(np.int64), np.ones((r, s), np.int64)) for r, s in points}


def _time(fn: Callable[[], Any], iters: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    # 20 warm-ups at least: on an H100 five were not enough for PyTorch's first point (41 ms p50
    # for 1x32 when it ran first, 21 ms after the other points had run).
    for _ in range(max(20, iters // 5)):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def _row(name: str, point: tuple[int, int], samples: list[float]) -> dict[str, Any]:
    rows, seq = point
    mean = statistics.fmean(samples)
    return {"backend": name, "rows": rows, "sequence": seq, "p50_ms": 1e3 * statistics.median(samples),
            "tokens_per_s": rows * seq / mean}


def bench_tensorrt(artefact: Path, precision: str, batches: dict, iters: int,
                   cuda_graphs: bool = False) -> tuple[list[dict], dict[str, float]]:
    from embedrt import Embedder
    from embedrt.backends import cuda
    from embedrt.backends.base import Batch
    from embedrt.config import BackendConfig

    baseline = cuda.memory_in_use()
    results = []
    name = f"tensorrt-{precision}" + ("-graphs" if cuda_graphs else "")
    config = BackendConfig(cuda_graphs=cuda_graphs)
    with Embedder.load(artefact, "tensorrt", precision=precision, backend_config=config) as embedder:
        backend = embedder._backend
        memory = {"after_load_mib": (cuda.memory_in_use() - baseline) / 2**20}
        for point, (ids, mask) in batches.items():
            batch = Batch(ids, mask, np.full(point[0], point[1]))
            results.append(_row(name, point, _time(lambda b=batch: backend.run(b), iters)))
        memory["at_largest_point_mib"] = (cuda.memory_in_use() - baseline) / 2**20
        memory["engine"] = backend.describe().engine_key or "?"  # type: ignore[assignment]
    return results, memory


# ONNX Runtime CUDA variants: (name suffix, BackendConfig overrides, environment).
ORT_VARIANTS = (
    ("fused", {}, {}),
    ("fused-graphs", {"cuda_graphs": True}, {}),
    ("fused-noflash", {}, {"ORT_DISABLE_FLASH_ATTENTION": "1"}),
    ("eager", {"attention": "eager"}, {}),
)


def bench_onnxruntime_cuda(artefact: Path, batches: dict, iters: int,
                           variants: tuple = ORT_VARIANTS) -> tuple[list[dict], dict[str, dict]]:
    """Each variant in a fresh session: tokens/s and p50 per point, GPU memory after load and at the
    largest point (device-wide, as nvidia-smi counts it), and what the session ran."""
    import os

    import onnxruntime

    from embedrt.backends import cuda
    from embedrt.backends.base import Batch
    from embedrt.backends.onnxruntime import OnnxRuntimeBackend
    from embedrt.config import BackendConfig
    from embedrt.errors import EmbedrtError
    from embedrt.manifest import load_manifest

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("ONNX Runtime CUDA: not installed (pip install onnxruntime-gpu); skipped")
        return [], {}
    manifest = load_manifest(artefact)
    precision = "fp16" if "fp16" in manifest.graphs else "fp32"
    results, memory = [], {}
    for suffix, overrides, env in variants:
        name = f"onnxruntime-cuda-{precision}-{suffix}"
        if manifest.graphs[precision].attention != "fused" and suffix.startswith("fused"):
            continue
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # read by ORT's attention kernels when the session is created
        baseline = cuda.memory_in_use()
        try:
            config = BackendConfig(precision=precision, device="cuda", **overrides)
            with OnnxRuntimeBackend(artefact, manifest, config) as backend:
                used = {"after_load_mib": (cuda.memory_in_use() - baseline) / 2**20}
                for point, (ids, mask) in batches.items():
                    batch = Batch(ids, mask, np.full(point[0], point[1]))
                    results.append(_row(name, point, _time(lambda b=batch: backend.run(b), iters)))
                used["at_largest_point_mib"] = (cuda.memory_in_use() - baseline) / 2**20
                used["describe"] = backend.describe().to_dict()  # type: ignore[assignment]
                memory[name] = used
        except EmbedrtError as exc:
            print(f"{name}: {exc}; skipped")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return results, memory


def memcpy_nodes(artefact: Path, graph_file: str, work: Path) -> list[str]:
    """Memcpy nodes in the CUDA-partitioned graph (ONNX Runtime saves it on request)."""
    import onnx
    import onnxruntime as ort

    from embedrt.backends.onnxruntime import _preload_cuda_libraries

    _preload_cuda_libraries(ort)
    work.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(work / "partitioned.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "partitioned.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(artefact / graph_file), options, providers=["CUDAExecutionProvider"])
    model = onnx.load(str(work / "partitioned.onnx"), load_external_data=False)
    copies = [n.name for n in model.graph.node if n.op_type.startswith("Memcpy")]
    (work / "partitioned.onnx").unlink()
    (work / "partitioned.data").unlink(missing_ok=True)
    return copies


def bench_pytorch(model_dir: Path, batches: dict, iters: int) -> tuple[list[dict], dict[str, float]]:
    import torch
    from transformers import AutoModel

    if not torch.cuda.is_available():
        print("PyTorch: this torch has no CUDA (install a CUDA build of torch); skipped")
        return [], {}
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float16, attn_implementation="sdpa").cuda().eval()
    weights = torch.cuda.memory_reserved()
    results = []
    with torch.inference_mode():
        for point, (ids, mask) in batches.items():
            t_ids, t_mask = torch.from_numpy(ids).cuda(), torch.from_numpy(mask).cuda()

            def run(i: Any = t_ids, m: Any = t_mask, net: Any = model) -> Any:
                hidden = net(input_ids=i, attention_mask=m).last_hidden_state
                return torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)  # last-token pooling, L2

            results.append(_row("pytorch-fp16-sdpa", point, _time(run, iters, torch.cuda.synchronize)))
    memory = {"after_load_mib": weights / 2**20, "at_largest_point_mib": torch.cuda.max_memory_reserved() / 2**20}
    del model
    torch.cuda.empty_cache()
    return results, memory


def _ensure_engines(artefact: Path, precisions: list[str]) -> list[str]:
    """Build the engines this GPU lacks; the precisions that can run here (a GPU no installed flavour
    supports, e.g. SM90 with only TensorRT-RTX, gets none, and the baselines still run)."""
    from embedrt.backends import cuda
    from embedrt.backends.trt_loader import installed_flavours
    from embedrt.engines import list_engines
    from embedrt.errors import EmbedrtError

    gpu = cuda.gpu_info(0)
    flavours = installed_flavours()
    have = {(r.key.sm, r.key.precision, r.key.flavour, r.key.trt_version) for r in list_engines(artefact)}
    missing = [p for p in precisions
               if not any((gpu.sm, p, f, m.__version__) in have for f, m in flavours.items())]
    if not missing:
        return precisions
    try:
        from embedrt_export.trt import BuildOptions, build_engines

        build_engines(artefact, BuildOptions(tuple(missing)))
    except (EmbedrtError, ImportError) as exc:
        print(f"TensorRT: no engine for {gpu.name} (sm{gpu.sm}): {exc}; TensorRT rows skipped")
        return [p for p in precisions if p not in missing]
    return precisions


def _targets(results: list[dict], memory: dict[str, dict]) -> list[str]:
    def tps(backend: str, point: tuple[int, int]) -> float | None:
        return next((r["tokens_per_s"] for r in results
                     if r["backend"] == backend and (r["rows"], r["sequence"]) == point), None)

    lines = []
    fp16, torch16 = tps("tensorrt-fp16", (32, 512)), tps("pytorch-fp16-sdpa", (32, 512))
    if fp16 and torch16:
        lines.append(f"TensorRT FP16 / PyTorch FP16 at 32x512: {fp16 / torch16:.2f}x (target >= 2x)")
    int8 = tps("tensorrt-int8", (32, 512))
    if int8 and fp16:
        lines.append(f"TensorRT INT8 / FP16 at 32x512: {int8 / fp16:.2f}x (target >= 1.3x)")
    graphs = tps("tensorrt-fp16-graphs", (32, 512))
    if graphs and fp16:
        lines.append(f"TensorRT FP16 with / without CUDA graphs at 32x512: {graphs / fp16:.2f}x")
    short = next((r["p50_ms"] for r in results if r["backend"] == "tensorrt-fp16" and r["rows"] == 1), None)
    if short is not None:
        lines.append(f"batch-1 x32 p50 latency, TensorRT FP16: {short:.2f} ms (target < 3 ms on a datacenter GPU)")
    short_graphs = next((r["p50_ms"] for r in results if r["backend"] == "tensorrt-fp16-graphs" and r["rows"] == 1),
                        None)
    if short is not None and short_graphs is not None:
        lines.append(f"batch-1 x32 p50 latency with CUDA graphs: {short_graphs:.2f} ms")
    if "fp16" in memory:
        lines.append(f"GPU memory held, FP16 engine: {memory['fp16']['after_load_mib']:.0f} MiB after load, "
                     f"{memory['fp16']['at_largest_point_mib']:.0f} MiB at the largest point (target <= 2048 MiB)")
    ort_fused, ort_eager = tps("onnxruntime-cuda-fp16-fused", (32, 512)), tps("onnxruntime-cuda-fp16-eager", (32, 512))
    if ort_fused and torch16:
        lines.append(f"ORT CUDA fused FP16 / PyTorch FP16 at 32x512: {ort_fused / torch16:.2f}x (target >= 1.5x, "
                     "aim 2x)")
    if ort_fused and ort_eager:
        lines.append(f"ORT CUDA fused / eager FP16 at 32x512: {ort_fused / ort_eager:.2f}x")
    noflash = tps("onnxruntime-cuda-fp16-fused-noflash", (32, 512))
    if ort_fused and noflash:
        lines.append(f"ORT CUDA fused FP16 with / without flash attention at 32x512: {ort_fused / noflash:.2f}x "
                     "(> 1: the flash kernel fired)")
    for backend in ("onnxruntime-cuda-fp16-fused-graphs", "onnxruntime-cuda-fp16-fused", "onnxruntime-cuda-fp16-eager"):
        p50 = next((r["p50_ms"] for r in results if r["backend"] == backend and (r["rows"], r["sequence"]) == (1, 32)),
                   None)
        if p50 is not None:
            lines.append(f"1x32 p50, {backend}: {p50:.2f} ms (target < 3 ms with CUDA graphs)")
    for backend in ("onnxruntime-cuda-fp16-fused", "onnxruntime-cuda-fp16-fused-graphs"):
        if backend in memory:
            lines.append(f"GPU memory, {backend}: {memory[backend]['after_load_mib']:.0f} MiB after load, "
                         f"{memory[backend]['at_largest_point_mib']:.0f} MiB at the largest point (target <= 2048 MiB)")
    if "placement" in memory:
        lines.append(f"Memcpy nodes in the CUDA-partitioned {memory['placement']['graph']}: "
                     f"{memory['placement'].get('memcpy_nodes', memory['placement'].get('error'))} (target: none)")
    if memory.get("pytorch-fp16-sdpa"):
        torch_memory = memory["pytorch-fp16-sdpa"]
        lines.append(f"GPU memory reserved by PyTorch FP16: {torch_memory['after_load_mib']:.0f} MiB after load, "
                     f"{torch_memory['at_largest_point_mib']:.0f} MiB at the largest point")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact", type=Path, required=True, help="artefact from `embedrt export`")
    parser.add_argument("--model", type=Path, help="the Hugging Face model directory, for the PyTorch baseline")
    parser.add_argument("--points", default=",".join(f"{r}x{s}" for r, s in POINTS), help="ROWSxLENGTH,...")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also run each TensorRT engine with CUDA graph capture (TensorRT-RTX)")
    parser.add_argument("--precisions", default="fp16,int8", help="engine precisions to run (those the artefact has)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--skip-ort", action="store_true", help="skip the ONNX Runtime CUDA variants")
    parser.add_argument("--work", type=Path, default=Path("build/bench-gpu-work"), help="scratch directory")
    args = parser.parse_args(argv)

    from embedrt.backends import cuda
    from embedrt.errors import EmbedrtError
    from embedrt.manifest import load_manifest

    try:
        gpu = cuda.gpu_info(0)
    except EmbedrtError as exc:
        print(f"bench_gpu: needs an NVIDIA GPU with a driver and cuda-python: {exc}", file=sys.stderr)
        return 2
    points = tuple(tuple(int(v) for v in p.split("x")) for p in args.points.split(","))
    manifest = load_manifest(args.artefact)
    vocab = int(manifest.pad_token_id) + 1  # ids below the pad id exist in every vocabulary we export
    batches = _batches(max(vocab, 1000), points)  # type: ignore[arg-type]
    precisions = [p for p in args.precisions.split(",") if p in manifest.graphs]
    print(f"GPU: {gpu.name} (sm{gpu.sm}, {gpu.total_bytes / 2**30:.0f} GiB); points {args.points}; "
          f"engines: {', '.join(precisions)}")
    precisions = _ensure_engines(args.artefact, precisions)
    results: list[dict] = []
    memory: dict[str, dict] = {}
    for precision in precisions:  # TensorRT first: before torch's caching allocator holds memory
        rows, memory[precision] = bench_tensorrt(args.artefact, precision, batches, args.iters)
        results += rows
        if args.cuda_graphs:
            rows, memory[f"{precision}-graphs"] = bench_tensorrt(args.artefact, precision, batches, args.iters, True)
            results += rows
    if not args.skip_ort:
        rows, ort_memory = bench_onnxruntime_cuda(args.artefact, batches, args.iters)
        results += rows
        memory.update(ort_memory)
        fp16 = manifest.graphs.get("fp16")
        if fp16 is not None and rows:
            try:
                memory["placement"] = {"graph": fp16.file,  # type: ignore[dict-item]
                                       "memcpy_nodes": memcpy_nodes(args.artefact, fp16.file, args.work)}
            except Exception as exc:  # report, never lose the timings above
                memory["placement"] = {"graph": fp16.file, "error": str(exc)[:500]}  # type: ignore[dict-item]
    if args.model:
        rows, memory["pytorch-fp16-sdpa"] = bench_pytorch(args.model, batches, args.iters)
        results += rows
    print(f"{'backend':<26}{'point':>10}{'p50 ms':>10}{'tokens/s':>14}")
    for r in results:
        print(f"{r['backend']:<26}{str(r['rows']) + 'x' + str(r['sequence']):>10}{r['p50_ms']:>10.2f}"
              f"{r['tokens_per_s']:>14,.0f}")
    for line in _targets(results, memory):
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"gpu": gpu.name, "sm": gpu.sm, "results": results, "memory": memory},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
