"""Which nodes of an exported graph get INT8, chosen from model structure, and checks on the result.

Only the linear layers are quantized: MatMul / Gemm whose second input is a weight. Everything else
stays float, by construction or by rule:
- the token-embedding Gather, normalisation layers (RMSNorm / LayerNorm), Softmax and the pooling /
  L2 tail are not MatMul / Gemm, so the quantizer never touches them;
- MatMuls inside a norm module or in the export wrapper (the pooling tail) are excluded by rule;
- activation x activation MatMuls (attention scores, attention x values) stay float: their inputs
  are per-tensor only (no weights to carry per-channel scales) and the softmax output uses just
  half of a symmetric INT8 range, for a small share of the FLOPs at embedding lengths;
- anything matching ``--exclude`` patterns (node name, module path or module class, fnmatch).
Structure comes from the module hierarchy that the dynamo exporter records in node metadata.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import module_classes, module_path, producers

QUANTIZED_OPS = ("MatMul", "Gemm")
_NORM_SUFFIXES = ("RMSNorm", "LayerNorm", "Norm")
# A transformer block in a module path: model.layers.3, encoder.layer.3, h.3, blocks.3
_LAYER = re.compile(r"^(.*?\b(?:layers|layer|h|blocks)\.(\d+))(?:\.|$)")
ALWAYS_FLOAT = ("token-embedding Gather", "normalisation layers", "Softmax", "pooling / L2 normalisation tail",
                "attention activation x activation MatMuls")


def layer_group(path: str) -> str:
    match = _LAYER.match(path)
    return match.group(1) if match else "other"


def role(path: str) -> str:
    """The same sub-module in every layer: ``model.layers.*.mlp.down_proj``."""
    match = _LAYER.match(path)
    return path.replace(match.group(1), match.group(1)[: -len(match.group(2))] + "*", 1) if match else path


@dataclass(frozen=True)
class Plan:
    quantize: tuple[str, ...]  # node names handed to the quantizer
    paths: dict[str, str]  # node name -> module path, for every node in ``quantize``
    excluded: dict[str, str] = field(default_factory=dict)  # candidate node -> why it stays float
    owners: dict[str, str] = field(default_factory=dict)  # node -> class of the module holding it (BertOutput)

    def groups(self, key: str = "layer") -> dict[str, tuple[str, ...]]:
        """Quantized nodes by transformer layer (``key="layer"``) or by role across layers."""
        keyfn = layer_group if key == "layer" else role
        out: dict[str, list[str]] = {}
        for name in self.quantize:
            out.setdefault(keyfn(self.paths[name]), []).append(name)
        return {k: tuple(v) for k, v in out.items()}

    def without(self, nodes: Sequence[str], reason: str) -> Plan:
        """The same plan with ``nodes`` kept float for ``reason`` (the automatic exclusion search)."""
        drop = set(nodes)
        return Plan(tuple(n for n in self.quantize if n not in drop),
                    {n: p for n, p in self.paths.items() if n not in drop},
                    {**self.excluded, **{n: reason for n in nodes}}, self.owners)

    def summary(self) -> dict[str, object]:
        reasons: dict[str, int] = {}
        for why in self.excluded.values():
            reasons[why] = reasons.get(why, 0) + 1
        return {"quantized_nodes": len(self.quantize), "always_float": list(ALWAYS_FLOAT),
                "excluded_counts": reasons, "excluded_nodes": dict(sorted(self.excluded.items()))}


def _matches(patterns: Sequence[str], node: onnx.NodeProto, path: str, classes: list[str]) -> str | None:
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(s, pattern) for s in (node.name, path, *classes)):
            return pattern
    return None


def make_plan(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> Plan:
    weights = {init.name for init in model.graph.initializer}
    chosen: list[str] = []
    paths: dict[str, str] = {}
    excluded: dict[str, str] = {}
    owners: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        classes = module_classes(node)
        path = module_path(node)
        pattern = _matches(exclude, node, path, classes)
        if len(classes) <= 1:
            excluded[node.name] = "pooling / normalisation tail"
        elif any(c.endswith(_NORM_SUFFIXES) for c in classes):
            excluded[node.name] = "normalisation layer"
        elif node.input[1] not in weights:
            excluded[node.name] = "activation x activation (attention)"
        elif pattern is not None:
            excluded[node.name] = f"--exclude {pattern}"
        else:
            chosen.append(node.name)
            paths[node.name] = path
            # classes end with the Linear itself; the one before names the block part (BertIntermediate).
            owners[node.name] = classes[-2]
    return Plan(tuple(chosen), paths, excluded, owners)


def quantized_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul / Gemm nodes whose weight input comes from an INT8 DequantizeLinear."""
    produced_by = producers(model.graph)
    inits = {init.name: init for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        source = produced_by.get(node.input[1])
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in inits:
            if inits[source.input[0]].data_type == onnx.TensorProto.INT8:
                names.append(node.name)
    return names


def nonzero_zero_points(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes with a non-zero zero point: TensorRT rejects them ("Non-zero zero point")."""
    inits = {init.name: init for init in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None or np.any(numpy_helper.to_array(zp) != 0):
                bad.append(node.name)
    return bad
