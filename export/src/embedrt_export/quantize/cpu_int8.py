"""The CPU INT8 graph: ONNX Runtime's fast u8s8 integer GEMMs with per-token activation scales.

What ONNX Runtime's CPU kernels (MLAS) run fast on x86 is u8s8: uint8 activations times int8 weights,
int32 accumulation. Per-channel int8 weights and a per-tensor uint8 activation are all its integer
MatMul ops take (``MatMulInteger``, ``com.microsoft.MatMulIntegerToFloat``, ``DynamicQuantizeMatMul``).
Symmetric int8 activations (the TensorRT Q/DQ graph) are s8s8, which MLAS runs fast only on
AVX-VNNI-INT8 CPUs; elsewhere it falls back to a portable C++ kernel or keeps the MatMul in float.

One scale for a whole activation tensor is what breaks BERT-family FFNs (and trained Qwen-family
residual streams): a few tokens carry values 40x the rest, and every other token is left with a few
levels. So each linear layer here quantizes its input *per token* (per row), at run time:

    x [.., K] -> rows [T, K] -> s_t = max|x_t| / 127 -> q = QuantizeLinear(x, s, zero point 128, axis 0)
    y = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * s_t        (exact int32 accumulation in MLAS)

``q`` is uint8 with zero point 128, i.e. symmetric 8-bit values stored as uint8 so that the u8s8
kernels take them; the per-row scale is applied to the float output, which is exact because it is
constant along the summed axis. Weights are int8 per output channel, symmetric. With
``weight_bits=7`` (the default) weights use [-63, 63]: then the AVX2 / AVX-512 (non-VNNI) u8s8
kernels, whose ``vpmaddubsw`` adds two u8 x s8 products into a saturating int16, can never saturate
(255 * 63 * 2 = 32130 < 32767), so the graph gives the same result on every x86 CPU, VNNI or not,
and the quality gate measured here holds on the machine that serves it. 8-bit weights are finer but
may saturate on AVX2 hosts (ONNX Runtime's documentation on ``reduce_range``).

Activations of the same tensor (q, k and v read one norm output) are quantized once. Everything
else (attention score MatMuls, norms, softmax, pooling) stays float, as in the Q/DQ graph.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import consumers, producers

MS_DOMAIN = "com.microsoft"
_PREFIX = "cpu_int8"


@dataclass(frozen=True)
class CpuInt8Result:
    quantized: tuple[str, ...]  # MatMul nodes now running as u8s8 integer GEMMs
    skipped: dict[str, str]  # planned nodes left float, and why
    activations: int  # distinct activation tensors quantized per token


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _Builder:
    """Appends nodes and constants with unique names; nodes go in a list spliced in by the caller."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.count = 0
        self.consts: dict[str, str] = {}

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{_PREFIX}/{stem}_{self.count}"

    def const(self, key: str, value: np.ndarray) -> str:
        if key not in self.consts:
            name = f"{_PREFIX}/const/{key}"
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
            self.consts[key] = name
        return self.consts[key]

    def node(self, out: list[onnx.NodeProto], op: str, inputs: Sequence[str], stem: str, domain: str = "",
             **attrs: Any) -> str:
        output = self.name(stem)
        out.append(helper.make_node(op, list(inputs), [output], name=output, domain=domain, **attrs))
        return output


def _quantize_weight(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (axis 1 of [K, N]); all-zero columns get scale 1."""
    qmax = float(2 ** (bits - 1) - 1)
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -qmax, qmax).astype(np.int8)
    return q, scale


CPU_UNSUPPORTED = "not a MatMul with a 2-D float weight"


def _weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The 2-D float weight initializer of a MatMul this quantizer can rewrite, else None."""
    weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
    if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
        return None
    return weight


def unsupported(model: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """Those of ``nodes`` that ``quantize_per_token`` would leave float: e.g. the ``Gemm`` of a cross-encoder's
    pooler and classifier, which see one row per input, a negligible share of the work."""
    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(nodes)
    return [n.name for n in model.graph.node if n.name in wanted and _weight(n, inits) is None]


def quantize_per_token(model: onnx.ModelProto, nodes: Sequence[str], weight_bits: int = 7,
                       per_tensor: Collection[str] = ()) -> CpuInt8Result:
    """Rewrite ``nodes`` (MatMul with a 2-D float weight initializer) of ``model`` in place.

    ``model`` must hold its weights (loaded with external data). Nodes that do not fit (another op
    type, a weight that is not a 2-D float initializer) stay float and are listed in ``skipped``.
    Nodes also in ``per_tensor`` get one activation scale per run instead (``DynamicQuantizeMatMul``,
    see ``norm_fed_groups``), with a following bias ``Add`` folded in.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8 (got {weight_bits})")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    b = _Builder(model)
    opset = _opset(model)
    inv127 = b.const("inv127", np.array(1.0 / 127.0, np.float32))
    tiny = b.const("tiny", np.array(1e-12, np.float32))
    one = b.const("one", np.array(1.0, np.float32))
    zp = b.const("zp128", np.array(128, np.uint8))
    minus1 = b.const("minus1", np.array([-1], np.int64))
    zero1 = b.const("zero1", np.array([0], np.int64))
    one1 = b.const("one1", np.array([1], np.int64))

    per_input: dict[str, tuple[str, str, str]] = {}  # activation -> (q rows, scale column, leading shape)
    done: list[str] = []
    skipped: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    read_by = consumers(graph)
    weight_users = {name: len(readers) for name, readers in read_by.items()}
    dropped: set[str] = set()
    absorbed: set[str] = set()  # bias Adds folded into a DynamicQuantizeMatMul

    for node in graph.node:
        if node.name in absorbed:
            continue
        if node.name not in wanted:
            new_nodes.append(node)
            continue
        weight = _weight(node, inits)
        if weight is None:
            skipped[node.name] = CPU_UNSUPPORTED
            new_nodes.append(node)
            continue
        k, n = (int(d) for d in weight.dims)
        x = node.input[0]
        wq, wscale = _quantize_weight(numpy_helper.to_array(weight), weight_bits)
        wq_name, ws_name = f"{weight.name}/int8", f"{weight.name}/scale"
        graph.initializer.extend([numpy_helper.from_array(wq, wq_name), numpy_helper.from_array(wscale, ws_name)])
        weight_users[weight.name] -= 1
        if weight_users[weight.name] == 0:
            dropped.add(weight.name)
        if node.name in per_tensor:
            bias_add, bias = _bias_add(node.output[0], n, read_by, inits)
            inputs, output = [x, wq_name, ws_name], node.output[0]
            if bias_add is not None:
                absorbed.add(bias_add.name)
                inputs, output = [*inputs, "", bias], bias_add.output[0]
            new_nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, [output], name=node.name,
                                              domain=MS_DOMAIN))
            done.append(node.name)
            continue
        if x not in per_input:
            rows = b.node(new_nodes, "Reshape", [x, b.const(f"rows{k}", np.array([-1, k], np.int64))], "rows")
            # max|x| per row from the row max and min: two reads of x, no |x| tensor written.
            axes: dict[str, Any] = {} if opset >= 18 else {"axes": [1]}  # ReduceMax axes: an input from opset 18
            hi, lo = (b.node(new_nodes, op, [rows, one1] if opset >= 18 else [rows], "peak", keepdims=0, **axes)
                      for op in ("ReduceMax", "ReduceMin"))
            peak = b.node(new_nodes, "Max", [hi, b.node(new_nodes, "Neg", [lo], "peak"), tiny], "peak")
            scale = b.node(new_nodes, "Mul", [peak, inv127], "scale")
            zps = b.node(new_nodes, "Expand", [zp, b.node(new_nodes, "Shape", [scale], "count")], "zps")
            q = b.node(new_nodes, "QuantizeLinear", [rows, scale, zps], "q", axis=0)
            column = b.node(new_nodes, "Unsqueeze", [scale, one1], "scale_col")
            lead = b.node(new_nodes, "Slice", [b.node(new_nodes, "Shape", [x], "shape"), zero1, minus1], "lead")
            per_input[x] = (q, column, lead)
        q, column, lead = per_input[x]
        acc = b.node(new_nodes, "MatMulIntegerToFloat", [q, wq_name, one, ws_name, zp], "mm", domain=MS_DOMAIN)
        scaled = b.node(new_nodes, "Mul", [acc, column], "y")
        shape = b.node(new_nodes, "Concat", [lead, b.const(f"n{n}", np.array([n], np.int64))], "yshape", axis=0)
        new_nodes.append(helper.make_node("Reshape", [scaled, shape], [node.output[0]], name=node.name))
        done.append(node.name)

    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if done and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return CpuInt8Result(tuple(done), skipped, len(per_input))


def _bias_add(output: str, n: int, read_by: dict[str, list[onnx.NodeProto]],
              inits: dict[str, onnx.TensorProto]) -> tuple[onnx.NodeProto | None, str]:
    """The ``Add`` of a 1-D float bias of length ``n`` that alone reads ``output``, and the bias's name."""
    readers = read_by.get(output, [])
    if len(readers) != 1 or readers[0].op_type != "Add" or len(readers[0].input) != 2:
        return None, ""
    first, second = readers[0].input
    other = second if first == output else first
    bias = inits.get(other)
    if bias is None or list(bias.dims) != [n] or bias.data_type != TensorProto.FLOAT:
        return None, ""
    return readers[0], other


_NORMS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})


def norm_fed_groups(model: onnx.ModelProto, roles: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Candidates for one activation scale per tensor: nodes of ``roles`` (node -> role across layers)
    whose input comes straight out of a normalization, grouped so that the nodes reading one tensor
    (q, k and v; gate and up) stay together: ``{"self_attn.k_proj + self_attn.q_proj + ...": nodes}``.

    A normalized token has about the magnitude of every other, so one scale per tensor may lose little
    against one per token there, and ``DynamicQuantizeMatMul`` then does the quantization, the integer
    GEMM, the scale and the bias in one pass. Per-token scales cost an extra pass over the GEMM's output
    (memory-bound: on MiniLM the per-token ``Mul`` and bias ``Add`` took more time than the GEMMs).
    Only candidates: the quantizer measures each group and keeps the ones that cost no quality.
    """
    producer = {name: node.op_type for name, node in producers(model.graph).items()}
    readers: dict[str, set[str]] = {}  # norm output -> roles reading it
    nodes_of: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name in roles and node.input and producer.get(node.input[0]) in _NORMS:
            readers.setdefault(node.input[0], set()).add(roles[node.name])
            nodes_of.setdefault(roles[node.name], []).append(node.name)
    merged: list[set[str]] = []
    for group in readers.values():
        overlapping = [m for m in merged if m & group]
        for m in overlapping:
            merged.remove(m)
            group = group | m
        merged.append(set(group))
    out: dict[str, tuple[str, ...]] = {}
    for group in merged:
        ordered = sorted(group)
        out[" + ".join(r.split("*.", 1)[-1] for r in ordered)] = tuple(n for r in ordered for n in nodes_of[r])
    return out


def integer_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of the integer-GEMM ops in a graph (what proves the fast CPU path is there)."""
    kinds = ("MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul",
             "DynamicQuantizeLinear", "QuantizeLinear")
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in kinds:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
