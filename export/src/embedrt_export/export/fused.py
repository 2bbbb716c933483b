"""The fused graph: the opset-23 standard ops ``Attention``, ``RMSNormalization``, ``RotaryEmbedding``.

torch.onnx's dynamo exporter emits these three ops when it exports at exactly opset 23 with SDPA
attention (onnxscript's fusions run at that opset only), but what it emits cannot run as is:

- the rotary cos / sin caches come out ``[1, S, D/2]``: ONNX Runtime and TensorRT want one row per
  batch row (or position ids) and reject them for batch > 1;
- K and V are still repeated to the query heads (Unsqueeze / Expand / Reshape), so grouped-query
  attention reads every K/V head several times;
- the attention mask is a boolean ``[B, 1, S, S]`` built from the padding mask, which keeps CUDA's
  flash kernel away (it takes no mask).

This post-pass fixes the three on our own export, so one exporter, one parity gate and one manifest
cover both graphs. For a causal model (Qwen3) it drops the mask and sets ``is_causal=1``: with pads
after the real tokens, causal attention never looks at them, so every real token's state is exact;
the graph is then exact for right padding only, which the manifest records (``padding_side``).

The pass asserts the op counts the model's structure implies (``expected_ops``): a transformers or
onnxscript upgrade that silently stops a fusion fails the export, naming what is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ExportError
from ..graph import producers

OPSET = 23
FUSED_OPS = ("Attention", "RMSNormalization", "RotaryEmbedding")
_KV_INPUTS = (1, 2)
_MASK_INPUT = 3


def expected_ops(per_layer: dict[str, int], extra: dict[str, int], layers: int) -> dict[str, int]:
    """Op counts a fused graph of ``layers`` decoder layers must hold."""
    return {op: per_layer.get(op, 0) * layers + extra.get(op, 0) for op in sorted({*per_layer, *extra})}


def op_counts(model: onnx.ModelProto, ops: Iterable[str] = FUSED_OPS) -> dict[str, int]:
    counts = Counter(node.op_type for node in model.graph.node)
    return {op: counts.get(op, 0) for op in ops}


def fuse(model: onnx.ModelProto, expected: dict[str, int], causal: bool) -> onnx.ModelProto:
    """Post-process a dynamo opset-23 SDPA export in place (see the module docstring); returns it."""
    _check_opset(model)
    _unrepeat_kv(model.graph)
    if causal:
        _drop_masks(model.graph)
    _dedupe(model.graph)
    _batch_rotary_caches(model.graph)
    _prune(model.graph)
    check(model, expected, causal)
    return model


def check(model: onnx.ModelProto, expected: dict[str, int], causal: bool) -> None:
    """Fail loudly unless the graph holds exactly the fused ops expected, in their fixed form."""
    counts = op_counts(model, expected)
    wrong = {op: (counts[op], want) for op, want in expected.items() if counts[op] != want}
    problems = [f"{op}: {have} found, {want} expected" for op, (have, want) in wrong.items()]
    produced_by = producers(model.graph)
    for node in model.graph.node:
        if node.op_type == "Attention":
            for i in _KV_INPUTS:
                source = produced_by.get(node.input[i])
                if source is not None and source.op_type in ("Reshape", "Expand"):
                    problems.append(f"{node.name}: K/V input {i} is still repeated ({source.op_type})")
                    break
            if causal and (len(node.input) > _MASK_INPUT and node.input[_MASK_INPUT]):
                problems.append(f"{node.name}: still takes a mask")
            if causal and _attr(node, "is_causal", 0) != 1:
                problems.append(f"{node.name}: is_causal is not 1")
        elif node.op_type == "RotaryEmbedding" and len(node.input) < 4:
            for i in (1, 2):
                source = produced_by.get(node.input[i])
                if source is None or source.op_type != "Expand":
                    problems.append(f"{node.name}: cache input {i} is not batched")
                    break
        elif node.op_type == "Softmax":
            problems.append(f"{node.name}: an unfused Softmax is left")
    if problems:
        import onnxscript
        import torch
        import transformers

        raise ExportError(
            "the fused graph is not what this embedrt expects ("
            + "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            + f"). torch {torch.__version__}, transformers {transformers.__version__}, onnxscript "
            f"{onnxscript.__version__} may have changed the export; export with `--attention eager` meanwhile"
        )


def _check_opset(model: onnx.ModelProto) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != OPSET:
        raise ExportError(f"the fused graph needs an opset-{OPSET} export (got opset {opset})")


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(helper.get_attribute_value(attr))
    return default


def _set_int_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _constant_ints(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).reshape(-1)]
    return None


def _unrepeat_kv(graph: onnx.GraphProto) -> None:
    """Attention(K = Reshape(Expand(Unsqueeze(k, axis 2)))) -> Attention(K = k): ONNX ``Attention``
    groups query heads over fewer K/V heads itself (kv head j serves query heads j*g .. j*g+g-1, the
    order ``repeat_kv`` produces)."""
    produced_by = producers(graph)
    for node in graph.node:
        if node.op_type != "Attention":
            continue
        for i in _KV_INPUTS:
            reshape = produced_by.get(node.input[i])
            expand = produced_by.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
            unsq = produced_by.get(expand.input[0]) if expand is not None and expand.op_type == "Expand" else None
            if unsq is None or unsq.op_type != "Unsqueeze":
                continue
            if _constant_ints(graph, unsq.input[1]) != [2]:
                continue
            node.input[i] = unsq.input[0]


def _drop_masks(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if node.op_type == "Attention":
            del node.input[_MASK_INPUT:]
            _set_int_attr(node, "is_causal", 1)


def _dedupe(graph: onnx.GraphProto) -> None:
    """Merge nodes that compute the same op on the same inputs (the exporter repeats the rotary
    Cos / Sin in every layer)."""
    seen: dict[tuple[object, ...], onnx.NodeProto] = {}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
        key = (node.domain, node.op_type, tuple(node.input), attrs, len(node.output))
        first = seen.get(key)
        if first is not None and node.op_type != "Constant" and not graph_outputs & set(node.output):
            rename.update(zip(node.output, first.output, strict=True))
            continue
        seen.setdefault(key, node)
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _batch_rotary_caches(graph: onnx.GraphProto) -> None:
    """Give RotaryEmbedding caches one row per batch row: Expand([1, S, D/2] -> [B, S, D/2])."""
    rotary = [n for n in graph.node if n.op_type == "RotaryEmbedding" and len(n.input) < 4]
    if not rotary:
        return
    ids = graph.input[0].name
    prefix = "embedrt_rotary"
    new = [
        helper.make_node("Shape", [ids], [f"{prefix}_batch"], start=0, end=1, name=f"{prefix}_batch"),
        helper.make_node("Constant", [], [f"{prefix}_ones"], name=f"{prefix}_ones",
                         value=numpy_helper.from_array(np.ones(2, dtype=np.int64))),
        helper.make_node("Concat", [f"{prefix}_batch", f"{prefix}_ones"], [f"{prefix}_shape"], axis=0,
                         name=f"{prefix}_shape"),
    ]
    types = {vi.name: vi for vi in graph.value_info}
    expanded: dict[str, str] = {}
    for node in rotary:
        for i in (1, 2):
            cache = node.input[i]
            if cache not in expanded:
                expanded[cache] = f"{cache}__batched"
                new.append(helper.make_node("Expand", [cache, f"{prefix}_shape"], [expanded[cache]],
                                            name=f"{cache}__expand"))
                elem = types[cache].type.tensor_type.elem_type if cache in types else TensorProto.FLOAT
                graph.value_info.append(helper.make_tensor_value_info(expanded[cache], elem, None))
            node.input[i] = expanded[cache]
    nodes = list(graph.node) + new
    del graph.node[:]
    graph.node.extend(_toposort(graph, nodes))


def _toposort(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producer_of = {out: k for k, node in enumerate(nodes) for out in node.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            idx, expanded = stack.pop()
            if idx in done:
                continue
            if expanded:
                done.add(idx)
                order.append(nodes[idx])
                continue
            stack.append((idx, True))
            for name in nodes[idx].input:
                if name not in available and name in producer_of and producer_of[name] not in done:
                    stack.append((producer_of[name], False))

    for k in range(len(nodes)):
        visit(k)
    return order


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes nothing reads (the mask and repeat subgraphs), then unused initializers."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output}
    infos = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
