"""Reading an exported ONNX graph: who produces and who reads each tensor, and which nn.Module a node
came from.

Shared by the passes that rewrite a graph (the fused-graph post-pass, FP16, the INT8 plan, SmoothQuant,
the CPU INT8 graph), so that each reads the graph the same way. The module hierarchy is what the
dynamo exporter records in every node's metadata; the FP16 islands and the INT8 plan are chosen from
it, so that their rules follow model structure rather than node names.
"""

from __future__ import annotations

import onnx

_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it."""
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def module_classes(node: onnx.NodeProto) -> list[str]:
    """The nn.Module classes enclosing a node, outermost first (short names)."""
    for prop in node.metadata_props:
        if prop.key == _HIERARCHY_KEY:
            entries = [c.strip(" '\"") for c in prop.value.strip("[]").split(",")]
            return [
                c.rsplit(".", 1)[-1]
                for c in entries
                if c and not c.startswith(("aten.", "<", "_")) and "." in c
            ]
    return []


def module_path(node: onnx.NodeProto) -> str:
    """The nn.Module path a node came from (``model.layers.1.self_attn.q_proj``), else its name."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            scopes = [s for s in scopes if s]
            return scopes[-2] if len(scopes) >= 2 else node.name
    return node.name
