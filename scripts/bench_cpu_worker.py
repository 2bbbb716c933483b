"""One side of scripts/bench_cpu.py, in its own process: load a model, then answer JSON commands.

Runs under the project's environment (embedrt, transformers) or under .venv-peers (sentence-
transformers with optimum-onnx), so nothing from either is imported at module level. Protocol: one
JSON object per line on stdin (load, embed, short, profile, quit), one JSON answer per line on
stdout; everything else a library prints goes to stderr.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ST_ONNX_FILES = {"O2": "model_O2.onnx", "avx2": "model_quint8_avx2.onnx",
                 "avx512_vnni": "model_qint8_avx512_vnni.onnx"}


def token_count(artefact: Path, texts: list[str]) -> int:
    """Real tokens per pass, by the artefact's own tokenizer (what tokens/s counts)."""
    from embedrt import Embedder

    with Embedder.load(artefact, "onnxruntime", precision="fp32") as embedder:
        return sum(item.length for item in embedder.prepare(texts))


class SentenceTransformers:
    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(spec["threads"])
        variant = spec.get("onnx")
        if variant is None:
            self.model = SentenceTransformer(spec["model"], device="cpu")
            return
        name = ST_ONNX_FILES[variant]
        if not (Path(spec["model"]) / "onnx" / name).exists():
            from sentence_transformers import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

            # Exported to ONNX in memory; the helpers below write only onnx/<their file> beside the model.
            plain = SentenceTransformer(spec["model"], device="cpu", backend="onnx")
            if variant == "O2":
                export_optimized_onnx_model(plain, "O2", spec["model"])
            else:
                export_dynamic_quantized_onnx_model(plain, variant, spec["model"])
        self.model = SentenceTransformer(spec["model"], device="cpu", backend="onnx",
                                         model_kwargs={"file_name": f"onnx/{name}", "provider": "CPUExecutionProvider"})

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)


class Transformers:
    """Qwen3 through transformers, the way its model card embeds: last real token, then L2."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(spec["threads"])
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(spec["model"])
        self.model = AutoModel.from_pretrained(spec["model"], dtype=torch.float32).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), 32):
                rows = order[start: start + 32]
                enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=512,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                if self.tokenizer.padding_side == "left":
                    pooled = hidden[:, -1]
                else:
                    last = enc["attention_mask"].sum(dim=1) - 1
                    pooled = hidden[torch.arange(hidden.shape[0]), last]
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class Embedrt:
    def __init__(self, spec: dict[str, Any]) -> None:
        from embedrt import Embedder
        from embedrt.batching import CPU_BUCKETS
        from embedrt.config import BackendConfig, BatchingConfig

        # Batches of 32 texts like the other sides (the runtime's CPU default caps a batch at 1,024 tokens).
        batching = BatchingConfig(max_batch_tokens=32 * 512, max_batch_size=32, sequence_buckets=CPU_BUCKETS)
        self.embedder = Embedder.load(spec["artefact"], "onnxruntime", precision=spec["precision"], batching=batching,
                                      backend_config=BackendConfig(device="cpu", intra_op_threads=spec["threads"]))
        self.spec = spec

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def backend_only(self, text: str) -> float:
        """Seconds of the backend's run alone for one text, prepared and collated outside the clock."""
        from embedrt.batching import bucket_for, collate

        e = self.embedder
        item = e.prepare([text])[0]
        sequence = bucket_for(item.length, e.batching.sequence_buckets, e._limits.max_sequence)
        batch = collate([item.ids], sequence, e.manifest.pad_token_id, e.manifest.padding_side)
        backend = e._backend
        start = time.perf_counter()
        backend.run(batch)
        return time.perf_counter() - start

    def profile(self, texts: list[str]) -> dict[str, Any]:
        """Share of ONNX Runtime kernel time by op type on ``texts`` (one pass, batches of 32)."""
        import onnxruntime as ort

        from embedrt_export.quantize.calibration import TextEncoder

        e = self.embedder
        graph = e.manifest.graph(e.precision)
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.intra_op_num_threads = self.spec["threads"]
        options.log_severity_level = 3
        session = ort.InferenceSession(str(Path(self.spec["artefact"]) / graph.file), options,
                                       providers=["CPUExecutionProvider"])
        encoder = TextEncoder(Path(self.spec["artefact"]), e.manifest)
        for feed in encoder.batches(texts, 32):
            session.run(["sentence_embedding"], feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        totals: dict[str, float] = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                op = event["args"]["op_name"]
                totals[op] = totals.get(op, 0.0) + event["dur"]
        grand = sum(totals.values())
        top = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
        return {"shares": {op: t / grand for op, t in top}}


def serve() -> None:
    protocol = sys.stdout
    sys.stdout = sys.stderr  # libraries print; only answers go to the protocol stream
    side: Any = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = handle(command, side)
            if command["cmd"] == "load":
                side, answer = answer, {"ok": True}
        except Exception as exc:  # reported to the orchestrator, which names the side
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()
        if command["cmd"] == "quit":
            return


def handle(command: dict[str, Any], side: Any) -> Any:
    cmd = command["cmd"]
    if cmd == "load":
        kinds = {"st": SentenceTransformers, "hf": Transformers, "embedrt": Embedrt}
        return kinds[command["kind"]](command)
    if cmd == "embed":
        start = time.perf_counter()
        vectors = side.embed(command["texts"])
        seconds = time.perf_counter() - start
        if command.get("save"):
            np.save(command["save"], np.asarray(vectors, dtype=np.float32))
        return {"seconds": seconds}
    if cmd == "short":
        calls, runs = [], []
        for _ in range(command["repeats"]):
            for query in command["queries"]:
                start = time.perf_counter()
                side.embed([query])
                calls.append(time.perf_counter() - start)
                if isinstance(side, Embedrt):
                    runs.append(side.backend_only(query))
        answer: dict[str, Any] = {"p50_ms": 1e3 * statistics.median(calls), "overhead_share": None}
        if runs:
            own = statistics.median(calls) - statistics.median(runs)
            answer.update(run_p50_ms=1e3 * statistics.median(runs), overhead_share=own / statistics.median(calls))
        return answer
    if cmd == "profile":
        return side.profile(command["texts"])
    if cmd == "quit":
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    serve()
