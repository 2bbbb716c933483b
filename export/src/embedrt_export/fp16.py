"""FP16 variant of an exported graph, with FP32 islands where FP16 would overflow or lose too much.

Strongly typed TensorRT builds take their precision from the ONNX dtypes, so this file *is* the
GPU precision plan. Matrix multiplies and most elementwise work run in FP16; these stay in FP32:
- normalisation layers (RMSNorm / LayerNorm): the variance of large activations overflows FP16;
- the residual stream: its sums grow across layers;
- rotary embeddings: position × frequency reaches 32K radians, where FP16's step is 32;
- the attention softmax and the mask addition feeding it (a fully masked row stays finite);
- everything outside the transformer body: pooling and L2 normalisation, a reranker's score, and a
  sequence classifier's head (cross-encoders: the one logit the score is read from).
Graph inputs stay int64 and graph outputs float32.

Casts are inserted only at the boundaries between FP16 and FP32 regions, once per tensor. (ONNX
Runtime's converter was tried first: it round-trips blocked tensors through FP16 between two
blocked nodes, which defeats the point.) Islands are chosen from the module hierarchy that the
dynamo exporter records in each node's metadata, so the rule follows model structure.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import consumers, module_classes, producers

_FP32_MODULE_SUFFIXES = ("RMSNorm", "LayerNorm", "RotaryEmbedding", "Pooler")
# Layer classes whose own Add nodes are the residual sums (Qwen3DecoderLayer, BertSelfOutput, ...).
_RESIDUAL_MODULE_SUFFIXES = ("DecoderLayer", "EncoderLayer", "SelfOutput", "Output", "Layer")
# Ops without FP16 kernels in common runtimes, or that produce index arithmetic.
# Cos / Sin take the rotary angles (position x frequency), which FP16 cannot hold past a few thousand.
_FP32_OPS = {"Range", "CumSum", "ReduceL2", "ArgMax", "TopK", "Cos", "Sin"}
# The lean plan (fused graphs only, chosen when the parity gate passes with it) keeps only what
# cannot be FP16 at all: rotary angles and the pooling tail. Norms run in FP16 there because the
# fused RMSNormalization accumulates in FP32 (stash_type=1); the residual stream is FP16.
PLANS = ("full", "lean")
_LEAN_MODULE_SUFFIXES = ("RotaryEmbedding", "Pooler")
_FP16_MAX = float(np.finfo(np.float16).max)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def fp32_island_nodes(model: onnx.ModelProto, plan: str = "full") -> set[str]:
    """Names of the nodes that must stay FP32 (see the module docstring) under ``plan``."""
    if plan not in PLANS:
        raise ValueError(f"unknown FP16 plan {plan!r} (known: {', '.join(PLANS)})")
    produced_by = producers(model.graph)
    keep: set[str] = set()
    lean = plan == "lean"
    for node in model.graph.node:
        classes = module_classes(node)
        inner = classes[-1] if classes else ""
        if len(classes) <= 1 or node.op_type in _FP32_OPS:
            keep.add(node.name)  # the export wrapper: pooling and normalisation tail
        elif _in_classifier_head(classes):
            keep.add(node.name)
        elif lean:
            if any(c.endswith(_LEAN_MODULE_SUFFIXES) for c in classes):
                keep.add(node.name)
        elif any(c.endswith(_FP32_MODULE_SUFFIXES) for c in classes):
            keep.add(node.name)
        elif node.op_type == "Softmax":
            keep.add(node.name)
            source = produced_by.get(node.input[0])
            if source is not None and source.op_type == "Add":
                keep.add(source.name)  # scores + additive mask
        elif node.op_type == "Add" and inner.endswith(_RESIDUAL_MODULE_SUFFIXES):
            keep.add(node.name)
    return keep


def _in_classifier_head(classes: list[str]) -> bool:
    """Inside a ``*ForSequenceClassification`` but outside its base model (``BertModel``): the head."""
    for i, name in enumerate(classes):
        if name.endswith("ForSequenceClassification"):
            return not any(inner.endswith("Model") for inner in classes[i + 1 :])
    return False


def _to_fp16_tensor(tensor: TensorProto, name: str | None = None) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    clipped = np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(clipped, name or tensor.name)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in infos}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def convert_to_fp16(model: onnx.ModelProto, plan: str = "full") -> onnx.ModelProto:
    """Convert ``model`` (FP32, shape-inferred) in place to FP16 with FP32 islands; returns it."""
    return _convert(model, fp32_island_nodes(model, plan))


def convert_qdq_to_fp16(model: onnx.ModelProto, plan: str = "full") -> onnx.ModelProto:
    """An INT8 Q/DQ graph (FP32 elsewhere, shape-inferred) in place to INT8 + FP16: what is float
    runs in FP16 exactly where ``convert_to_fp16`` puts it, the FP32 islands stay FP32.

    Strongly typed TensorRT takes every non-quantized op's precision from the graph, so without
    this an INT8 engine runs attention, activations and the embedding table in FP32. Q/DQ nodes
    carry no module hierarchy; each takes the precision of the float tensor it touches, so no Cast
    ever sits between a DequantizeLinear and its MatMul (TensorRT fuses the pair into an INT8
    GEMM only when they are adjacent): a DequantizeLinear runs in FP16 when all its consumers do,
    a QuantizeLinear in the precision of its input. Scales follow their node (FP16 scales need
    opset 19); a scale shared by an FP32 Q and an FP16 DQ is duplicated, never cast.
    """
    island = fp32_island_nodes(model, plan)
    qdq = {n.name for n in model.graph.node if n.op_type in _QDQ}
    island -= qdq
    _split_mixed_dequantize(model, island)
    produced_by = producers(model.graph)
    read_by = consumers(model.graph)
    for node in model.graph.node:  # topological: a Q's producer is decided before the Q
        if node.op_type == "QuantizeLinear":
            source = produced_by.get(node.input[0])
            if source is None or source.name in island:
                island.add(node.name)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            users = read_by.get(node.output[0], [])
            if not users or any(u.name in island for u in users):
                island.add(node.name)
    return _convert(model, island, split_scales=True)


def _split_mixed_dequantize(model: onnx.ModelProto, island: set[str]) -> None:
    """A DequantizeLinear read by FP16 and FP32 nodes alike (BERT: a LayerNorm output feeds both the
    Q/K/V MatMuls and the FP32 residual Add) gets an FP16 twin for its FP16 readers, so that a Cast
    never separates it from a MatMul."""
    read_by = consumers(model.graph)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "DequantizeLinear":
            continue
        users = read_by.get(node.output[0], [])
        half = [u for u in users if u.op_type not in _QDQ and u.name not in island]
        if not half or len(half) == len(users):
            continue
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name, twin.output[0] = f"{node.name}__fp16", f"{node.output[0]}__fp16"
        for user in half:
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = twin.output[0]
        nodes.append(twin)
        _copy_value_info(model, node.output[0], twin.output[0])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _copy_value_info(model: onnx.ModelProto, source: str, target: str) -> None:
    for vi in list(model.graph.value_info):
        if vi.name == source:
            copy = model.graph.value_info.add()
            copy.CopyFrom(vi)
            copy.name = target
            return


def _convert(model: onnx.ModelProto, island: set[str], split_scales: bool = False) -> onnx.ModelProto:
    graph = model.graph
    types = _float_types(model)
    is_float = {name for name, t in types.items() if t == TensorProto.FLOAT}

    # Where each float tensor lives: FP16 if its producer runs in FP16.
    home16: set[str] = set()
    for node in graph.node:
        if node.name not in island:
            home16.update(o for o in node.output if o in is_float)
    read_by = consumers(graph)
    for init in graph.initializer:
        users = read_by.get(init.name, [])
        if init.data_type == TensorProto.FLOAT and users and all(u.name not in island for u in users):
            init.CopyFrom(_to_fp16_tensor(init))
            home16.add(init.name)

    if split_scales:  # Q/DQ scales: an FP16 copy for FP16 nodes whose scale stayed FP32 (mixed users)
        inits = {init.name: init for init in graph.initializer}
        copies: dict[str, str] = {}
        for node in graph.node:
            if node.op_type in _QDQ and node.name not in island and node.input[1] not in home16 \
                    and node.input[1] in inits:
                scale = node.input[1]
                if scale not in copies:
                    copies[scale] = f"{scale}__fp16"
                    graph.initializer.append(_to_fp16_tensor(inits[scale], copies[scale]))
                    home16.add(copies[scale])
                    is_float.add(copies[scale])
                node.input[1] = copies[scale]

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{name}__{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"{name}__cast_{suffix}"))
        return casts[key]

    graph_outputs = {o.name for o in graph.output}
    renamed_outputs: dict[str, str] = {}
    for node in graph.node:
        fp16 = node.name not in island
        want = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
        for i, name in enumerate(node.input):
            if name in is_float and (name in home16) != fp16:
                node.input[i] = cast(name, want)
        if fp16:
            _retype_attributes(node)
            for j, out in enumerate(node.output):
                if out in graph_outputs and out in is_float:
                    renamed_outputs[out] = f"{out}__fp16"
                    node.output[j] = renamed_outputs[out]
        new_nodes.append(node)
    for out, inner in renamed_outputs.items():
        new_nodes.append(helper.make_node("Cast", [inner], [out], to=TensorProto.FLOAT, name=f"{out}__cast_out"))

    del graph.node[:]
    graph.node.extend(new_nodes)
    for vi in graph.value_info:
        if vi.name in home16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Make a node that now runs in FP16 produce FP16 where it named FP32 explicitly."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_to_fp16_tensor(attr.t))
