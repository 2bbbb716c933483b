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


def export_graph(module: torch.nn.Module, vocab_size: int, opset: int, with_hidden_states: bool,
                 inputs: tuple[str, ...] = INPUT_NAMES, outputs: tuple[str, ...] | None = None) -> onnx.ModelProto:
    """Trace ``module`` (an ``EmbeddingGraph``, or a reranker graph with its ``inputs`` / ``outputs``) into
    an FP32 ModelProto with dynamic batch/sequence."""
    generator = torch.Generator().manual_seed(0)
    # Batch 2 and length 11: neither is 0 or 1, so torch.export does not specialise them.
    input_ids = torch.randint(0, vocab_size, (2, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    examples = {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": (torch.arange(11) >= 5).to(torch.int64).expand(2, 11).contiguous()}
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in inputs}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(examples[name] for name in inputs),
            dynamo=True,
            input_names=list(inputs),
            output_names=list(outputs or output_names(with_hidden_states)),
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


def save(model: onnx.ModelProto, path: Path, share_with: Path | None = None) -> tuple[str, ...]:
    """Save a graph with its weights in ``<file>.data`` beside it; returns the side files it reads.

    Always external, not only past protobuf's 2 GB limit: ONNX Runtime memory-maps external weights
    (a 0.6B-width model's resident memory after load: 0.37x its weights, against about 1.75x with the
    weights inside the .onnx), and every artefact then has the same layout.

    ``share_with``: another graph of the same artefact (saved already, in the same directory) whose
    external weights this one may reference instead of storing them again: a tensor whose dtype,
    shape and bytes equal one of that graph's is pointed at its file and offset. The fused and eager
    graphs of one precision hold the same weights, so the second costs only its own few tensors.
    """
    location = path.name + ".data"
    if share_with is not None:
        _reference_shared(model, share_with)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    if (path.parent / location).exists():
        (path.parent / location).chmod(0o644)  # onnx creates it private; artefacts are shared read-only
    onnx.checker.check_model(str(path))
    return external_files(path)


def external_files(path: Path) -> tuple[str, ...]:
    """The external-data files a saved graph reads, its own first."""
    model = onnx.load(str(path), load_external_data=False)
    own = path.name + ".data"
    found: list[str] = []
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next(e.value for e in tensor.external_data if e.key == "location")
            if where not in found:
                found.append(where)
    return tuple(sorted(found, key=lambda name: name != own))


def _tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def _reference_shared(model: onnx.ModelProto, donor_path: Path) -> int:
    """Point ``model``'s large tensors at identical ones in ``donor_path``'s external data; returns
    how many were shared. Tensors are matched by dtype, shape and content, never by name (two traces
    name their constants differently)."""
    import hashlib

    import numpy as np

    donor = onnx.load(str(donor_path), load_external_data=False)
    index: dict[tuple[int, tuple[int, ...], bytes], list[tuple[str, str]]] = {}
    maps: dict[str, np.memmap] = {}
    for tensor in donor.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        where = info["location"]
        if where not in maps:
            maps[where] = np.memmap(donor_path.parent / where, dtype=np.uint8, mode="r")
        start = int(info.get("offset", 0))
        data = maps[where][start : start + int(info["length"])]
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data.data).digest())
        index[key] = list(info.items())
    shared = 0
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < 1024:
            continue
        entries = index.get((tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest()))
        if entries is None:
            continue
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for name, value in entries:
            entry = tensor.external_data.add()
            entry.key, entry.value = name, value
        shared += 1
    return shared
