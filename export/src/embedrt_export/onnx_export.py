"""torch -> ONNX with the dynamo exporter, and saving graphs with their weights in a side file.

Why the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), opset 20, eager attention:
- it is the exporter PyTorch maintains; the TorchScript-based one is deprecated;
- lower peak memory on big checkpoints (0.6B: 3.0 GB vs 4.4 GB), which is what limits 4B/8B exports;
- one external-data file instead of hundreds, and an already-optimised graph (205 vs 649 nodes on a
  2-layer Qwen3);
- every node records the nn.Module classes it came from, which the FP16 pass uses to place its
  FP32 islands by model structure;
- eager attention exports a plain MatMul/Softmax/MatMul that TensorRT fuses, where SDPA's traced
  ``is_causal`` adds guards that can stop the fusion.
Its cost is time (about 8 s for a tiny model against 0.4 s), which the tests pay once per model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

INPUT_NAMES = ("input_ids", "attention_mask")


def output_names(with_hidden_states: bool) -> tuple[str, ...]:
    return ("sentence_embedding", "embedding_norm") + (("last_hidden_state",) if with_hidden_states else ())


def export_graph(module: torch.nn.Module, vocab_size: int, opset: int, with_hidden_states: bool) -> onnx.ModelProto:
    """Trace ``module`` (an ``EmbeddingGraph``) into an FP32 ModelProto with dynamic batch/sequence."""
    generator = torch.Generator().manual_seed(0)
    # Batch 2 and length 11: neither is 0 or 1, so torch.export does not specialise them.
    input_ids = torch.randint(0, vocab_size, (2, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    dynamic = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (input_ids, attention_mask),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names(with_hidden_states)),
            dynamic_shapes=dynamic,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    model = program.model_proto
    _name_dynamic_axes(model)
    return model


@contextlib.contextmanager
def _quiet_loggers():
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _name_dynamic_axes(model: onnx.ModelProto) -> None:
    """Give graph I/O the axis names users see (``batch``, ``sequence``) whatever the tracer chose."""
    names = {0: "batch", 1: "sequence"}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") and axis in names:
                dim.dim_param = names[axis]


def save(model: onnx.ModelProto, path: Path) -> tuple[str, ...]:
    """Save a graph with its weights in ``<file>.data`` beside it; returns the side files.

    Always external, not only past protobuf's 2 GB limit: ONNX Runtime memory-maps external weights
    (a 0.6B-width model's resident memory after load: 0.37x its weights, against about 1.75x with the
    weights inside the .onnx), and every artefact then has the same layout.
    """
    location = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    (path.parent / location).chmod(0o644)  # onnx creates it private; artefacts are shared read-only
    onnx.checker.check_model(str(path))
    return (location,)
