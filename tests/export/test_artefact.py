"""Atomic, relocatable artefacts and clear failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from embedrt.manifest import load_manifest
from embedrt_export import ExportOptions, ParityError, SourceNotFoundError, export_model
from embedrt_export.export import parity
from embedrt_export.export.source import file_sha256


def test_parity_failure_names_worst_text_and_leaves_nothing(qwen3_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(parity.TOLERANCE, "fp32", 1.5)  # impossible
    out = tmp_path / "art"
    with pytest.raises(ParityError) as info:
        export_model(str(qwen3_dir), out, ExportOptions(dtypes=("fp32",), max_length=32), log=lambda _: None)
    message = str(info.value)
    assert "min cosine" in message and "on text" in message and "fp32" in message
    assert info.value.report["passed"] is False
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial directory left behind


def test_interrupted_export_leaves_no_complete_looking_directory(qwen3_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "measure", interrupted)
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt):
        export_model(str(qwen3_dir), out, ExportOptions(dtypes=("fp32",), max_length=32), log=lambda _: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(qwen3_artefact: Path, qwen3_dir: Path) -> None:
    from embedrt_export import ExportError

    with pytest.raises(ExportError, match="--overwrite"):
        export_model(str(qwen3_dir), qwen3_artefact, ExportOptions(), log=lambda _: None)


def test_external_data_artefact_is_relocatable(qwen3_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "art"
    m = export_model(str(qwen3_dir), out, ExportOptions(max_length=32), log=lambda _: None)
    assert m.graphs["fp32"].external_data == ("model.fp32.onnx.data",)
    assert m.graphs["fp16"].external_data == ("model.fp16.onnx.data",)
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)
    moved_manifest = load_manifest(moved)
    for name, digest in moved_manifest.files.items():
        assert file_sha256(moved / name) == digest, name
    ids = np.array([[3, 4, 5, 6]], dtype=np.int64)
    for precision in ("fp32", "fp16"):
        session = ort.InferenceSession(str(moved / f"model.{precision}.onnx"))
        emb = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-3


def test_hub_id_offline_says_to_pass_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceNotFoundError, match="local directory"):
        export_model("Qwen/Qwen3-Embedding-0.6B", tmp_path / "x", log=lambda _: None)
    assert not (tmp_path / "x").exists()


def test_missing_local_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no such directory"):
        export_model(str(tmp_path / "nope" / "model"), tmp_path / "x", log=lambda _: None)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # A bare environment (offline, no tokens), but the same import path as this process: the code under
    # test, and its entry-point metadata, where PYTHONPATH points at a checkout.
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "embedrt.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_cli_export(qwen3_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-art"
    result = _cli("export", str(qwen3_dir), "--out", str(out), "--dtype", "fp32", "--max-length", "48",
                  "--name", "tiny")
    assert result.returncode == 0, result.stderr
    m = load_manifest(out)
    assert m.name == "tiny" and m.max_length == 48 and set(m.graphs) == {"fp32"}
    assert "parity: fp32" in result.stdout


def test_cli_errors_are_clear(qwen3_dir: Path, tmp_path: Path) -> None:
    bad = _cli("export", str(qwen3_dir), "--out", str(tmp_path / "o"), "--dtype", "int4")
    assert bad.returncode == 2 and "--dtype must be among fp32, fp16" in bad.stderr
    offline = _cli("export", "Qwen/Qwen3-Embedding-8B", "--out", str(tmp_path / "o"))
    assert offline.returncode == 2 and "pass that local directory" in offline.stderr
    assert "Traceback" not in offline.stderr


def test_tokenizer_json_must_agree_with_transformers(qwen3_dir: Path, tmp_path: Path) -> None:
    """The runtime tokenizes with tokenizer.json alone: a file that disagrees with transformers is refused."""
    import json

    from embedrt_export import ExportError

    broken = tmp_path / "model"
    shutil.copytree(qwen3_dir, broken)
    data = json.loads((broken / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Lowercase"}  # transformers' Qwen2Tokenizer ignores it; tokenizers does not
    (broken / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="differently from transformers"):
        export_model(str(broken), tmp_path / "out", ExportOptions(dtypes=("fp32",), max_length=32),
                     log=lambda _: None)
    assert not (tmp_path / "out").exists()
