"""`embedrt embed --output DIR/`: shards equal the library's vectors; resume, refusal, overwrite, bad rows."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bulk_helpers import Interrupted, record_of, stop_after, table_of, write_corpus, write_jsonl
from runtime_helpers import mixed_texts

from embedrt import Embedder, InvalidInputError
from embedrt.bulk import RECORD, BulkOptions, Columns, run
from embedrt.cli import main

TEXTS = mixed_texts(53, seed=5)


def _options(artefact: Path, inputs: list[Path | str], output: Path, **kw: object) -> BulkOptions:
    base = BulkOptions(artefact=artefact, inputs=tuple(str(i) for i in inputs), output=output, shard_size=10,
                       window=8, progress=False)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def corpus(tmp_path: Path) -> list[Path]:
    """The 53 texts over four inputs of every format: 20 JSONL, 13 CSV, 10 Parquet, 10 TXT."""
    return write_corpus(tmp_path / "in", TEXTS)


def test_shards_of_every_format_equal_embed(qwen3_artefact: Path, qwen3: Embedder, corpus: list[Path],
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = run(_options(qwen3_artefact, [tmp_path / "in" / "*.jsonl", *corpus[1:]], out))
    ids, vectors = table_of(out)
    assert ids == list(range(53))  # without --id-column: the row's index across all inputs
    np.testing.assert_allclose(vectors, qwen3.embed_documents(TEXTS), atol=2e-6)
    assert sorted(p.name for p in out.iterdir()) == [RECORD, *(f"part-{i:06d}.parquet" for i in range(6))]
    schema = pq.read_schema(out / "part-000000.parquet")
    assert str(schema.field("id").type) == "int64"
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[64]"
    doc = record_of(out)
    assert doc["complete"] and doc["rows"] == 53 and doc["finished"] and doc["seconds"] > 0
    assert doc["tokens"] == record.tokens == sum(e.length for e in qwen3.prepare(TEXTS))
    assert [s["rows"] for s in doc["shards"]] == [[i, min(i + 10, 53)] for i in range(0, 53, 10)]
    assert [(Path(i["path"]).name, i["format"], i["rows"]) for i in doc["inputs"]] == [
        ("a.jsonl", "jsonl", 20), ("b.csv", "csv", 14), ("c.parquet", "parquet", 10), ("d.txt", "txt", 10)]
    assert all(i["size"] == os.path.getsize(i["path"]) and len(i["sha256"]) == 64 for i in doc["inputs"])
    assert doc["model"] == {"name": qwen3.manifest.name, "backend": "onnxruntime", "precision": "fp32",
                            "attention": "fused", "device": "cpu", "graph": "model.fp32.onnx", "dimensions": 64}
    assert doc["settings"]["prompt"] == "document" and doc["skipped"] == 0


def test_ids_carried_and_queries(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": TEXTS[:25], "key": list(range(1000, 1025))}), src)
    out = tmp_path / "out"
    run(_options(qwen3_artefact, [src], out, columns=Columns("body", "key"), prompt="query",
                 instruction="Find papers", dimensions=32))
    ids, vectors = table_of(out)
    assert ids == list(range(1000, 1025))
    np.testing.assert_allclose(vectors, qwen3.embed_queries(TEXTS[:25], instruction="Find papers", dimensions=32),
                               atol=2e-6)
    jsonl = write_jsonl(tmp_path / "in.jsonl", TEXTS[:5], [f"doc-{i}" for i in range(5)])
    run(_options(qwen3_artefact, [jsonl], tmp_path / "out2", columns=Columns("text", "doc"), prompt="query"))
    ids, vectors = table_of(tmp_path / "out2")
    assert ids == [f"doc-{i}" for i in range(5)]
    np.testing.assert_allclose(vectors, qwen3.embed_queries(TEXTS[:5]), atol=2e-6)


def test_command_line_and_standard_input(qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = "\n".join(TEXTS[:12]).encode() + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "out"
    assert main(["embed", str(qwen3_artefact), "--input", "-", "--output", f"{out}/", "--shard-size", "5",
                 "--dimensions", "48"]) == 0
    assert f"wrote 12 x 48 embeddings in 3 shards to {out}/" in capsys.readouterr().err
    ids, vectors = table_of(out)
    assert ids == list(range(12))
    np.testing.assert_allclose(vectors, qwen3.embed_documents(TEXTS[:12], dimensions=48), atol=2e-6)
    [entry] = record_of(out)["inputs"]
    assert entry["path"] == "-" and entry["size"] == len(data) and len(entry["sha256"]) == 64


def test_resume_after_an_interruption_equals_an_uninterrupted_run(qwen3_artefact: Path, corpus: list[Path],
                                                                   tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    run(_options(qwen3_artefact, corpus, whole))
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run(_options(qwen3_artefact, corpus, out), after_shard=stop_after(2))
    doc = record_of(out)
    assert not doc["complete"] and doc["finished"] is None and len(doc["shards"]) == 2  # nothing looks complete
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "part-000000.parquet", "part-000001.parquet"]
    before = [(out / f"part-00000{i}.parquet").stat().st_mtime_ns for i in range(2)]
    messages: list[str] = []
    run(_options(qwen3_artefact, corpus, out), log=messages.append)
    assert messages == ["resuming: 2 shards (20 rows) already done"]
    assert [(out / f"part-00000{i}.parquet").stat().st_mtime_ns for i in range(2)] == before  # not redone
    ids, vectors = table_of(out)
    want_ids, want = table_of(whole)
    assert ids == want_ids == list(range(53))
    np.testing.assert_allclose(vectors, want, atol=2e-6)
    doc, full = record_of(out), record_of(whole)
    assert doc["complete"] and doc["rows"] == 53 and doc["tokens"] == full["tokens"]
    assert [s["texts_sha256"] for s in doc["shards"]] == [s["texts_sha256"] for s in full["shards"]]
    # Windows start at each shard, so a resumed run embeds a shard as an uninterrupted one does: the same bytes.
    assert [s["sha256"] for s in doc["shards"]] == [s["sha256"] for s in full["shards"]]
    messages.clear()
    run(_options(qwen3_artefact, corpus, out), log=messages.append)  # complete: nothing to do
    assert messages == [f"{out} already holds this run, complete (53 rows); nothing to do"]


def test_a_damaged_shard_is_redone(qwen3_artefact: Path, corpus: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(_options(qwen3_artefact, corpus, out))
    want = table_of(out)
    (out / "part-000003.parquet").write_bytes(b"garbage")
    (out / "part-000005.parquet").unlink()
    messages: list[str] = []
    run(_options(qwen3_artefact, corpus, out), log=messages.append)
    assert messages[0].startswith("part-000003.parquet has 7 bytes, not the ")
    assert messages[0].endswith("recorded: redoing the run from it")
    assert table_of(out)[0] == want[0] and record_of(out)["complete"]
    np.testing.assert_allclose(table_of(out)[1], want[1], atol=2e-6)


def test_resume_from_standard_input_checks_the_rows_again(qwen3_artefact: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def stdin(texts: list[str]) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(texts) + "\n").encode())))

    out = tmp_path / "out"
    stdin(TEXTS[:30])
    with pytest.raises(Interrupted):
        run(_options(qwen3_artefact, ["-"], out), after_shard=stop_after(1))
    stdin(["another text", *TEXTS[1:30]])
    with pytest.raises(InvalidInputError, match=r"input rows 0 to 9 are not those part-000000\.parquet was "
                                                r"made from: the input changed since; pass --overwrite"):
        run(_options(qwen3_artefact, ["-"], out))
    stdin(TEXTS[:30])
    run(_options(qwen3_artefact, ["-"], out))
    assert table_of(out)[0] == list(range(30)) and record_of(out)["complete"]


def test_other_arguments_are_refused_and_overwrite_starts_over(qwen3_artefact: Path, corpus: list[Path],
                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run(_options(qwen3_artefact, corpus, out), after_shard=stop_after(1))
    for change, says in ((dict(dimensions=32), "--dimensions: (none) -> 32"),
                         (dict(prompt="query"), "--query / --instruction (prompt): 'document' -> 'query'"),
                         (dict(precision="fp16"), "--precision: 'auto' -> 'fp16'"),
                         (dict(shard_size=20), "--shard-size: 10 -> 20"),
                         (dict(inputs=tuple(str(p) for p in corpus[:2])), "inputs: ")):
        with pytest.raises(InvalidInputError, match="holds a run made with other arguments") as caught:
            run(replace(_options(qwen3_artefact, corpus, out), **change))  # type: ignore[arg-type]
        assert says in str(caught.value) and "--overwrite to start over" in str(caught.value)
    time.sleep(0.01)
    corpus[3].write_text("changed\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"input .*d.txt changed"):
        run(_options(qwen3_artefact, corpus, out))
    assert len(record_of(out)["shards"]) == 1  # refusals leave the run as it was
    (out / ".DS_Store").write_text("a hidden file is no one's business")
    run(_options(qwen3_artefact, corpus, out, dimensions=32, overwrite=True))
    assert (out / ".DS_Store").exists()  # --overwrite removes the run's files only
    doc = record_of(out)
    assert doc["complete"] and doc["rows"] == 44 and doc["settings"]["dimensions"] == 32
    assert table_of(out)[1].shape == (44, 32)


def test_bad_rows_fail_with_file_and_line_or_are_skipped_and_listed(qwen3_artefact: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": t}) for t in TEXTS[:30]]
    lines[14] = json.dumps({"body": "no text"})
    lines[22] = json.dumps({"text": None})
    src.write_bytes(("\n".join(lines[:25]) + "\n").encode() + b'{"text": "caf\xe9"}\n' +
                    ("\n".join(lines[26:]) + "\n").encode())
    out = tmp_path / "out"
    args = ["embed", str(qwen3_artefact), "--input", str(src), "--output", f"{out}/", "--shard-size", "10"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f'embedrt embed: error: {src}:15 needs a "text" field holding a string; pass --on-error skip' in err
    assert len(record_of(out)["shards"]) == 1 and not record_of(out)["complete"]  # the first shard is kept
    assert main([*args, "--on-error", "skip"]) == 0  # resumes, skipping
    assert "; skipped 3 rows (listed in the run record)" in capsys.readouterr().err
    doc = record_of(out)
    assert doc["skipped"] == 3 and doc["rows"] == 27
    assert doc["skipped_rows"] == [
        {"index": 14, "input": str(src), "line": 15, "reason": 'needs a "text" field holding a string'},
        {"index": 22, "input": str(src), "line": 23, "reason": 'has a null "text"'},
        {"index": 25, "input": str(src), "line": 26,
         "reason": "is not UTF-8 text (byte 0xe9); convert the file to UTF-8"}]
    assert table_of(out)[0] == [i for i in range(30) if i not in (14, 22, 25)]  # ids keep the row's place


def test_ids_of_another_kind_are_bad_rows(qwen3_artefact: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS[:4], [1, 2, "three", 4])
    with pytest.raises(InvalidInputError, match=r"in.jsonl:3 has id 'three', a string, where the earlier ids are "
                                                r"int64s"):
        run(_options(qwen3_artefact, [src], tmp_path / "out", columns=Columns("text", "doc")))


def test_unwritable_output_is_refused_before_the_model_loads(tmp_path: Path, corpus: list[Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The artefact does not exist: an error about --output proves it came first."""
    missing = str(tmp_path / "no-artefact")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for output, says in ((f"{blocker}/", "it is a file, not a directory"),
                         (f"{blocker}/sub/", "Not a directory")):
        assert main(["embed", missing, "--input", str(corpus[0]), "--output", output]) == 2
        err = capsys.readouterr().err
        assert err.startswith("embedrt embed: error: cannot write --output ") and says in err, err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["embed", missing, "--input", str(corpus[0]), "--output", str(foreign), "--overwrite"]) == 2
    assert "holds files that are not an embedrt run's (notes.txt)" in capsys.readouterr().err
    assert main(["embed", missing, "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "new/")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "new").exists()  # created, then removed


def test_one_writer_per_directory(qwen3_artefact: Path, corpus: list[Path], tmp_path: Path) -> None:
    from embedrt.bulk.record import Output

    out = tmp_path / "out"
    holder = Output.open(out)
    try:
        with pytest.raises(InvalidInputError, match="another embedrt run is writing into"):
            run(_options(qwen3_artefact, corpus, out))
    finally:
        holder.close()


def test_corpus_flags_need_a_directory_and_texts_need_a_file(qwen3_artefact: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", str(qwen3_artefact), "x", "--on-error", "skip", "--output", str(tmp_path / "o.npy")]) == 2
    assert "--on-error go with --output DIR/" in capsys.readouterr().err
    assert main(["embed", str(qwen3_artefact), "x", "--output", f"{tmp_path}/o/"]) == 2
    assert "TEXT arguments do not go into a directory of shards" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_result(qwen3_artefact: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run (no cleanup at all): the record is not complete, no shard is half-written, and
    the same command completes it."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{t} {i}\n" for i in range(40) for t in TEXTS[:50]), encoding="utf-8")  # 2,000 rows
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "embedrt.cli", "embed", str(qwen3_artefact), "--input", str(src), "--output",
           f"{out}/", "--shard-size", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(record_of(out)["shards"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    doc = record_of(out)
    assert not doc["complete"], "the run finished before it could be killed; make the input longer"
    names = os.listdir(out)
    assert all(n == RECORD or n.startswith("part-") for n in names if not n.startswith("."))
    assert all(".tmp-" in n for n in names if n.startswith("."))  # only the killed writer's temporaries
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming: " in result.stderr
    ids, vectors = table_of(out)
    assert ids == list(range(2000)) and vectors.shape == (2000, 64)
    with Embedder.load(qwen3_artefact, "onnxruntime", precision="fp32") as embedder:
        np.testing.assert_allclose(vectors[::97], embedder.embed_documents(src.read_text().splitlines()[::97]),
                                   atol=2e-6)
