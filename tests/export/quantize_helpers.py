"""Helpers shared by the quantization tests and their fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from embedrt.manifest import load_manifest

# Calibration on few texts (the shipped set has several hundred) keeps the tests quick; the held-out
# set is cut too, keeping enough queries and documents for top-10 retrieval agreement.
QUICK = dict(limit_calibration=40, limit_heldout=64, show_progress=False)
# A reranker's sets are query lists (10 documents each in the held-out set): a few lists keep each run to
# a few seconds; the ranking figures need more than one.
RERANK_QUICK = dict(limit_calibration=12, limit_heldout=16, show_progress=False)
LINEAR_PER_LAYER = {"qwen3": 7, "bert": 6}  # q k v o gate up down / q k v attn-out intermediate output


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)  # session fixtures are shared: change a copy
    return dst


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(artefact: Path, key: str = "int8") -> onnx.ModelProto:
    return onnx.load(str(artefact / load_manifest(artefact).graph(key).file), load_external_data=True)
