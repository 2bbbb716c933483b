"""The runtime never imports torch or transformers: proven in a fresh interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import embedrt

HEAVY = ("torch", "transformers", "onnx", "sentence_transformers", "embedrt_export")
# `embedrt` loads the export stage's command registration (entry points) where it is installed: that
# much of embedrt_export may be imported, nothing that would bring torch along.
REGISTRATION = {"embedrt_export", "embedrt_export.errors", "embedrt_export.cli"}

_SCRIPT = """
import json, sys
from embedrt import Embedder
from embedrt.cli import build_parser
build_parser()
with Embedder.load(sys.argv[1]) as embedder:
    embedder.embed(["hello", ""], dimensions=32)
    embedder.embed_queries(["what?"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2].split(","))))
"""


def _fresh(code: str, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_load_and_embed_without_torch(qwen3_artefact: Path) -> None:
    loaded = _fresh(_SCRIPT, str(qwen3_artefact), ",".join(HEAVY))
    commands = [m for m in loaded if m.startswith("embedrt_export.cli.")]
    assert commands == ["embedrt_export.cli.build_cmd", "embedrt_export.cli.export_cmd",
                        "embedrt_export.cli.quantize_cmd"]
    assert [m for m in loaded if m not in REGISTRATION and m not in commands] == []


def test_every_runtime_module_imports_without_torch() -> None:
    # Polygraphy-style: import every module of the package, so no hidden import creeps in. Optional
    # extras (server, TensorRT) may be missing; torch and friends must be absent even then.
    names = [m.name for m in pkgutil.walk_packages(embedrt.__path__, "embedrt.") if not m.name.endswith("__main__")]
    code = ("import importlib, json, sys\n"
            "heavy = sys.argv[2].split(',')\n"
            "for name in sys.argv[1].split(','):\n"
            "    try: importlib.import_module(name)\n"
            "    except ModuleNotFoundError as exc:\n"
            "        if (exc.name or '').split('.')[0] in heavy + ['embedrt']: raise\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))")
    assert "embedrt.embedder" in names and "embedrt.backends.onnxruntime" in names
    assert _fresh(code, ",".join(names), ",".join(HEAVY)) == []
