"""SmoothQuant (Xiao et al., 2023) on an ONNX graph, before static INT8 quantization.

Some input channels of a linear layer carry activations far larger than the rest (BERT's FFN
down-projection input, the RMSNorm outputs of trained LLM-family models). One per-tensor INT8 scale
must then cover the outlier, and every other channel is left with a few levels. SmoothQuant moves
that difficulty into the weights, which are quantized per output channel and tolerate it:
``X @ W == (X / s) @ (diag(s) @ W)`` with ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)``.

``1/s`` is folded into the producer of ``X`` when that is a per-channel affine op whose output feeds
only the smoothed layers (RMSNorm's weight Mul, the scale of opset-23 RMSNormalization, LayerNormalization's
scale and bias); otherwise an
explicit ``Mul`` is inserted, which TensorRT fuses into the following quantize.
ONNX Runtime's own ``SmoothQuant`` option needs Intel Neural Compressor; this is the same algorithm
in a page, without that dependency.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import consumers, producers

Batch = Mapping[str, np.ndarray]


def channel_maxima(model: onnx.ModelProto, inputs: Sequence[str], batches: Iterable[Batch]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor in ``inputs`` over ``batches``, real (unmasked) tokens only."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in inputs:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor visible
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for batch in batches:
        values = session.run(list(inputs), dict(batch))
        mask = batch["attention_mask"].astype(bool)
        for name, value in zip(inputs, values, strict=True):
            # Pads are masked out downstream; their activations should not set the scale.
            rows = value[mask] if value.ndim == 3 and value.shape[:2] == mask.shape else value
            peak = np.abs(rows.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return maxima


def smooth(model: onnx.ModelProto, targets: Sequence[str], batches: Iterable[Batch],
           alpha: float = 0.5) -> dict[str, int]:
    """Apply SmoothQuant in place to the MatMul nodes named in ``targets``; returns counts by fold kind."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    produced_by = producers(graph)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.name in targets and node.op_type == "MatMul" and node.input[1] in inits:
            groups.setdefault(node.input[0], []).append(node)
    maxima = channel_maxima(model, list(groups), batches)
    counts = {"folded": 0, "inserted_mul": 0}
    for x, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (np.power(np.maximum(maxima[x], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha))
        scale = np.clip(scale, 1e-2, 1e4).astype(np.float32)
        for node, w in zip(nodes, weights, strict=True):
            node.input[1] = _own_initializer(model, inits, node.input[1], w * scale[:, None], node.name)
        only_targets = {u.name for u in users.get(x, [])} == {n.name for n in nodes}
        if only_targets and _fold(model, inits, produced_by.get(x), 1.0 / scale):
            counts["folded"] += 1
            continue
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{x}__smooth_inv")
        graph.initializer.append(inv)
        smoothed = f"{x}__smoothed"
        mul = helper.make_node("Mul", [x, inv.name], [smoothed], name=f"{x}__smooth_mul")
        for node in nodes:
            node.input[0] = smoothed
        _insert_before(graph, nodes[0], mul)
        counts["inserted_mul"] += 1
    _drop_unused_initializers(model)
    return counts


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _own_initializer(model: onnx.ModelProto, inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray,
                     owner: str) -> str:
    """Store ``value`` under a name used only by ``owner`` (weights may be tied to other nodes)."""
    new = numpy_helper.from_array(value.astype(np.float32), f"{name}__smooth_{owner}")
    model.graph.initializer.append(new)
    inits[new.name] = new
    return new.name


def _fold(model: onnx.ModelProto, inits: dict[str, onnx.TensorProto], producer: onnx.NodeProto | None,
          inv: np.ndarray) -> bool:
    """Scale a per-channel affine producer by ``inv``; False when the producer is not one."""
    if producer is None:
        return False
    if producer.op_type in ("LayerNormalization", "RMSNormalization"):  # scale (and bias) inputs
        slots = [i for i in (1, 2) if i < len(producer.input) and producer.input[i]]
    elif producer.op_type == "Mul":
        slots = [i for i in (0, 1) if producer.input[i] in inits]
    else:
        return False
    if not slots or not all(producer.input[i] in inits for i in slots):
        return False
    arrays = [numpy_helper.to_array(inits[producer.input[i]]) for i in slots]
    if any(a.shape[-1:] != inv.shape for a in arrays):
        return False
    for i, a in zip(slots, arrays, strict=True):
        producer.input[i] = _own_initializer(model, inits, producer.input[i], a * inv, producer.name)
    return True


def _insert_before(graph: onnx.GraphProto, anchor: onnx.NodeProto, node: onnx.NodeProto) -> None:
    """Keep the node list topologically sorted: the new Mul goes right before its first consumer."""
    nodes = list(graph.node)
    index = next(i for i, n in enumerate(nodes) if n.name == anchor.name)
    nodes.insert(index, node)
    del graph.node[:]
    graph.node.extend(nodes)
