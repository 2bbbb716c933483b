"""Every error path raises the named exception with a message that says what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import TEXTS

import embedrt.model
from embedrt import (
    ArtefactError,
    BackendError,
    DeadlineExceededError,
    Embedder,
    EngineMismatchError,
    InputTooLongError,
    InvalidFieldError,
    InvalidInputError,
    UnavailableError,
)
from embedrt.backends import Batch, create_backend
from embedrt.config import BackendConfig
from embedrt.errors import status_for


def test_non_string_names_its_index(qwen3: Embedder) -> None:
    with pytest.raises(InvalidInputError, match="input 2 is int"):
        qwen3.embed(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="input 0 is NoneType"):
        qwen3.embed_queries([None])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="not a single string"):
        qwen3.embed("just one text")


def test_too_long_without_truncation(qwen3: Embedder) -> None:
    with pytest.raises(InputTooLongError) as info:
        qwen3.embed(["short", TEXTS[-1]], truncate=False)
    err = info.value
    assert err.index == 1 and err.limit == 128 and err.tokens > 128
    count = f"at least {err.tokens}" if err.at_least else f"{err.tokens}"  # a huge text: counted from a prefix
    assert f"input 1 has {count} tokens" in str(err) and "truncate=True" in str(err)
    assert status_for(err) == ("INVALID_ARGUMENT", 400)
    assert qwen3.embed(["short"], truncate=False).shape == (1, 64)  # within the limit: fine


def test_a_passed_deadline_is_deadline_exceeded_not_unavailable() -> None:
    from embedrt.server.http_errors import error_parts

    late = DeadlineExceededError("the request's deadline passed while it was queued")
    assert status_for(late) == ("DEADLINE_EXCEEDED", 504)
    status, body, _ = error_parts(late)
    assert status == 504 and b'"timeout_error"' in body


def test_dimensions_outside_range(qwen3: Embedder, minilm: Embedder) -> None:
    for bad in (31, 65, 0):
        with pytest.raises(InvalidInputError, match="between 32 and 64"):
            qwen3.embed(["x"], dimensions=bad)
    with pytest.raises(InvalidInputError, match="integer"):
        qwen3.embed(["x"], dimensions=32.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no Matryoshka range"):
        minilm.embed(["x"], dimensions=128)
    assert minilm.embed(["x"], dimensions=384).shape == (1, 384)


def test_closed_embedder_is_unavailable(qwen3_artefact: Path) -> None:
    embedder = Embedder.load(qwen3_artefact)
    embedder.close()
    embedder.close()  # idempotent
    with pytest.raises(UnavailableError, match="closed"):
        embedder.embed(["x"])


def test_bad_artefacts_and_options(qwen3_artefact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="not a directory"):
        Embedder.load(tmp_path / "nope")
    with pytest.raises(ArtefactError, match=r"no manifest\.json"):
        Embedder.load(tmp_path)
    with pytest.raises(ArtefactError, match="no int8 graph"):
        Embedder.load(qwen3_artefact, precision="int8")
    with pytest.raises(InvalidInputError, match="unknown backend"):
        Embedder.load(qwen3_artefact, "tflite")
    with pytest.raises(InvalidInputError, match="device"):
        Embedder.load(qwen3_artefact, backend_config=BackendConfig(device="tpu"))
    broken = tmp_path / "broken"
    shutil.copytree(qwen3_artefact, broken)
    (broken / "model.fp32.onnx").write_bytes(b"not onnx")
    (broken / "model.fp32.eager.onnx").write_bytes(b"not onnx either")  # else the eager twin takes over
    with pytest.raises(BackendError, match=r"could not load model\.fp32\.onnx.*eager twin failed too"):
        Embedder.load(broken, precision="fp32")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ArtefactError, match=r"tokenizer\.json is missing"):
        Embedder.load(broken, precision="fp16")


def test_backend_failure_is_a_backend_error(qwen3_artefact: Path) -> None:
    from embedrt import load_manifest

    manifest = load_manifest(qwen3_artefact)
    with create_backend("onnxruntime", qwen3_artefact, manifest, BackendConfig()) as backend:
        ids = np.full((1, 4), 10**7, dtype=np.int64)  # far outside the vocabulary: Gather fails
        with pytest.raises(BackendError, match=r"shape \(1, 4\)"):
            backend.run(Batch(ids, np.ones_like(ids), np.array([4])))
    with pytest.raises(BackendError, match="not open"):
        backend.run(Batch(ids, np.ones_like(ids), np.array([4])))


def test_auto_falls_back_to_onnxruntime_when_engines_do_not_fit(qwen3_artefact: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    artefact = tmp_path / "with-engines"
    shutil.copytree(qwen3_artefact, artefact)
    (artefact / "engines").mkdir()
    real = embedrt.model.create_backend
    asked: list[str] = []

    def fake(name, *args):  # type: ignore[no-untyped-def]
        asked.append(name)
        if name == "tensorrt":
            raise EngineMismatchError("no engine for this GPU")
        return real(name, *args)

    monkeypatch.setattr(embedrt.model, "create_backend", fake)
    with Embedder.load(artefact) as embedder:
        assert asked == ["tensorrt", "onnxruntime"] and embedder.backend_name == "onnxruntime"
    # Without the stub: whatever the tensorrt module does here (absent, or no GPU), auto still works.
    monkeypatch.setattr(embedrt.model, "create_backend", real)
    with Embedder.load(artefact) as embedder:
        assert embedder.backend_name == "onnxruntime"
        assert embedder.embed(["x"]).shape == (1, 64)


def test_instruction_on_a_model_without_an_instruction_template_is_refused_by_every_verb(minilm: Embedder) -> None:
    """embed(instruction=...) and embed_queries(instruction=...) are one behaviour: refused, not silently ignored."""
    for call in (lambda: minilm.embed(["x"], instruction="Find things"),
                 lambda: minilm.embed_queries(["x"], instruction="Find things"),
                 lambda: minilm.prepare(["x"], instruction="")):
        with pytest.raises(InvalidFieldError, match="takes no instruction") as info:
            call()
        assert info.value.field == "instruction" and isinstance(info.value, InvalidInputError)
        assert "'{text}'" in str(info.value) and "leave the instruction out" in str(info.value)
    np.testing.assert_array_equal(minilm.embed_queries(["x"]), minilm.embed(["x"]))  # no instruction: fine


def test_precision_hint_names_only_commands_that_exist(qwen3_artefact: Path) -> None:
    with pytest.raises(ArtefactError, match="no fp8 graph") as info:
        Embedder.load(qwen3_artefact, precision="fp8")
    message = str(info.value)
    assert "--dtype fp8" not in message
    assert "embedrt export" in message and "embedrt quantize" in message and "fp32, fp16, int8, int8-cpu" in message
    for precision, hint in (("int8", "`embedrt quantize ARTEFACT`"), ("int8-cpu", "`embedrt quantize ARTEFACT`")):
        with pytest.raises(ArtefactError, match=f"no {precision} graph") as info:
            Embedder.load(qwen3_artefact, "onnxruntime", precision=precision)
        assert hint in str(info.value)
