"""`embedrt embed`: texts and files in, JSON / .npy / .jsonl out, the same vectors as the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedrt import Embedder
from embedrt.cli import main


def test_texts_to_stdout_json(qwen3_artefact: Path, qwen3: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", str(qwen3_artefact), "hello world", ""]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == qwen3.manifest.name and doc["dimensions"] == 64 and doc["backend"] == "onnxruntime"
    got = np.array([row["embedding"] for row in doc["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, qwen3.embed(["hello world", ""]), atol=1e-7)


@pytest.mark.parametrize("flag", ["--instruction", "--query-task"])  # --query-task: the older spelling
def test_instruction_and_dimensions(qwen3_artefact: Path, qwen3: Embedder, capsys: pytest.CaptureFixture[str],
                                    flag: str) -> None:
    assert main(["embed", str(qwen3_artefact), "rope", flag, "Find papers", "--dimensions", "32"]) == 0
    got = np.array(json.loads(capsys.readouterr().out)["data"][0]["embedding"], dtype=np.float32)
    want = qwen3.embed_queries(["rope"], instruction="Find papers", dimensions=32)[0]
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert main(["embed", str(qwen3_artefact), "rope", "--query"]) == 0
    got = np.array(json.loads(capsys.readouterr().out)["data"][0]["embedding"], dtype=np.float32)
    np.testing.assert_allclose(got, qwen3.embed_queries(["rope"])[0], atol=1e-7)


def test_txt_file_to_npy_with_progress(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"line {i} " + "word " * (i % 40) for i in range(310)]  # over the progress-bar threshold
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert main(["embed", str(qwen3_artefact), "--input", str(tmp_path / "in.txt"), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "310/310" in err and f"wrote 310 x 64 embeddings to {out}" in err
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (310, 64)
    np.testing.assert_allclose(vectors, qwen3.embed(texts), atol=1e-6)


def test_jsonl_in_and_out(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path) -> None:
    texts = ["first text", "zweiter Text", "第三"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["embed", str(qwen3_artefact), "--input", str(src), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), qwen3.embed(texts), atol=1e-6)


def test_errors_exit_2_with_a_message(qwen3_artefact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", str(qwen3_artefact)]) == 2
    assert "nothing to embed" in capsys.readouterr().err
    assert main(["embed", str(qwen3_artefact), "x", "--dimensions", "7"]) == 2
    assert "between 32 and 64" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    assert main(["embed", str(qwen3_artefact), "--input", str(bad)]) == 2
    assert 'bad.jsonl:2 needs a "text" field' in capsys.readouterr().err
    assert main(["embed", str(qwen3_artefact), "x", "--output", str(tmp_path / "out.csv")]) == 2
    assert ".npy or .jsonl" in capsys.readouterr().err


def test_runs_as_a_command(qwen3_artefact: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "embed", str(qwen3_artefact), "hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["data"][0]["embedding"]) == 64


def test_txt_lines_split_on_newline_only(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path) -> None:
    """U+2028, U+0085 and a form feed are text, not line breaks; CRLF ends a line like LF; a BOM is no text."""
    texts = ["one\u2028still one", "two\x0cstill two", "three\x85still three", "", "five"]
    src = tmp_path / "in.txt"
    src.write_bytes(("\ufeff" + "\r\n".join(texts[:3]) + "\n\n" + texts[4] + "\r\n").encode())
    out = tmp_path / "out.npy"
    assert main(["embed", str(qwen3_artefact), "--input", str(src), "--output", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), qwen3.embed(texts), atol=1e-6)


def test_non_utf8_input_names_file_and_line(qwen3_artefact: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("in.txt", "in.jsonl"):
        src = tmp_path / name
        src.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
        assert main(["embed", str(qwen3_artefact), "--input", str(src)]) == 2
        err = capsys.readouterr().err
        assert f"{src}:2 is not UTF-8 text (byte 0xe9" in err and "Traceback" not in err


def test_input_from_stdin(qwen3_artefact: Path, qwen3: Embedder, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"alpha\r\nbeta\n")))
    assert main(["embed", str(qwen3_artefact), "--input", "-"]) == 0
    got = np.array([row["embedding"] for row in json.loads(capsys.readouterr().out)["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, qwen3.embed(["alpha", "beta"]), atol=1e-6)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "alpha"}\n')))
    assert main(["embed", str(qwen3_artefact), "--input", "-", "--input-format", "jsonl"]) == 0
    got = np.array(json.loads(capsys.readouterr().out)["data"][0]["embedding"], dtype=np.float32)
    np.testing.assert_allclose(got, qwen3.embed(["alpha"])[0], atol=1e-6)


def test_unwritable_output_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The artefact path does not exist: an error about --output proves it came before loading."""
    missing_artefact = str(tmp_path / "no-artefact")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "a-dir.npy").mkdir()
    for output, says in ((tmp_path / "no-dir" / "out.npy", "does not exist"),
                         (blocker / "out.npy", "Not a directory"),
                         (tmp_path / "a-dir.npy", "is a directory")):
        assert main(["embed", missing_artefact, "x", "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("embedrt embed: error: cannot write --output ") and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir.npy", "a-file"]  # nothing left behind


def test_failed_run_keeps_an_existing_output(tmp_path: Path, qwen3_artefact: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    assert main(["embed", str(qwen3_artefact), "x", "--dimensions", "7", "--output", str(out)]) == 2
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_closed_stdout_exits_quietly(qwen3_artefact: Path) -> None:
    """`embedrt embed ... | head -c 10`: the reader goes away; no traceback, exit 141 like other tools."""
    proc = subprocess.Popen([sys.executable, "-m", "embedrt.cli", "embed", str(qwen3_artefact), *["word"] * 200],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the first byte: the write must meet a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_several_inputs_of_any_format_in_memory(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path) -> None:
    """Small jobs read through the bulk readers too: CSV and Parquet with --text-column, globs, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.csv").write_text('id,body\n1,"first, text"\n2,second\n', encoding="utf-8")
    pq.write_table(pa.table({"body": ["third", "fourth"]}), tmp_path / "b.parquet")
    out = tmp_path / "out.npy"
    assert main(["embed", str(qwen3_artefact), "--input", str(tmp_path / "*.csv"), str(tmp_path / "b.parquet"),
                 "--text-column", "body", "--output", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), qwen3.embed(["first, text", "second", "third", "fourth"]), atol=1e-6)
