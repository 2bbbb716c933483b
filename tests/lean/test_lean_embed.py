"""Load and embed a real artefact where only the runtime is installed (no torch, no transformers).

`make test` exports a tiny Qwen3 with the main environment (scripts/make_test_artefact.py), with
PyTorch reference vectors beside it, and passes the artefact here through EMBEDRT_LEAN_ARTEFACT.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedrt import Embedder


@pytest.fixture(scope="module")
def artefact() -> Path:
    value = os.environ.get("EMBEDRT_LEAN_ARTEFACT")
    if not value:  # fail, never skip: a lean run that embeds nothing proves nothing
        pytest.fail("EMBEDRT_LEAN_ARTEFACT is not set; run `make test`, or export one with "
                    "`.venv/bin/python scripts/make_test_artefact.py DIR` and set it to DIR/artefact")
    path = Path(value)
    assert (path / "manifest.json").is_file(), f"{path} is not an artefact"
    return path


def test_embeds_like_pytorch(artefact: Path) -> None:
    reference = json.loads((artefact.parent / "reference.json").read_text(encoding="utf-8"))
    with Embedder.load(artefact) as embedder:
        assert embedder.backend_name == "onnxruntime" and embedder.precision == "fp32"
        got = embedder.embed(reference["texts"])
        alone = np.stack([embedder.embed([t])[0] for t in reference["texts"]])
        queries = embedder.embed_queries(reference["texts"][:2], dimensions=32)
    expected = np.asarray(reference["vectors"], dtype=np.float32)
    assert float((got * expected).sum(axis=1).min()) >= 0.99999
    np.testing.assert_allclose(got, alone, atol=2e-5)
    assert queries.shape == (2, 32)
    for name in ("torch", "transformers", "onnx"):
        assert name not in sys.modules


def test_embed_command(artefact: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "embed", str(artefact), "hello", ""],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["data"]) == 2


def test_bulk_without_pyarrow_says_what_to_install(artefact: Path, tmp_path: Path) -> None:
    """The lean environment has no pyarrow: TXT and JSONL still embed into .npy; Parquet shards or
    Parquet input are refused, before any work, naming the extra to install."""
    assert importlib.util.find_spec("pyarrow") is None
    src = tmp_path / "in.txt"
    src.write_text("alpha\nbeta\n", encoding="utf-8")
    ok = _embed(artefact, "--input", str(src), "--output", str(tmp_path / "out.npy"))
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "out.npy").shape == (2, 64)
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    for args, what in ((("--input", str(src), "--output", f"{tmp_path}/shards/"), "writing Parquet shards"),
                       (("--input", str(tmp_path / "in.parquet")), "reading Parquet")):
        result = _embed(artefact, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr == f"embedrt embed: error: {what} needs pyarrow, which is not installed: " \
                                "pip install 'embedrt[bulk]'\n"
    assert not (tmp_path / "shards").exists()


def test_ray_without_ray_says_what_to_install(artefact: Path, tmp_path: Path) -> None:
    """No Ray here either: --ray is refused before anything, naming the extra (which brings pyarrow too); the
    modules that drive Ray import without it."""
    assert importlib.util.find_spec("ray") is None
    import embedrt.bulk.ray  # noqa: F401

    src = tmp_path / "in.txt"
    src.write_text("alpha\n", encoding="utf-8")
    result = _embed(artefact, "--input", str(src), "--output", f"{tmp_path}/shards/", "--ray")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "embedrt embed: error: --ray needs Ray Data: pip install 'embedrt[ray]' (missing: ray)\n"
    assert not (tmp_path / "shards").exists()


def _embed(artefact: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedrt.cli", "embed", str(artefact), *args],
                          capture_output=True, text=True, timeout=120)


def test_an_artefact_url_without_pyarrow_says_what_to_install(artefact: Path) -> None:
    url = artefact.resolve().as_uri()
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "embed", url, "hello"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"embedrt embed: error: an artefact URL ({url}) needs pyarrow's file systems: "
                             "pip install 'embedrt[bulk]', or give a local path\n")
