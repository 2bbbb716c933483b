"""Bulk inputs and readers, without a model: each format's rows, ids, positions and problems; globs;
standard input; fingerprints."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrt import InvalidInputError
from embedrt.bulk import readers
from embedrt.bulk.inputs import Input, expected_rows, fingerprint, resolve
from embedrt.bulk.readers import Columns


def _rows(path: Path | str, fmt: str, columns: Columns = Columns()) -> list[readers.Row]:
    source = Input(str(path), fmt)
    readers.check(source, columns)
    return list(readers.read(source, columns))


def _problems(rows: list[readers.Row]) -> list[str]:
    return [str(r.problem) for r in rows if r.problem is not None]


def test_txt_lines_crlf_bom_and_an_unterminated_last_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes("\ufeffone\r\ntwo\u2028still two\n\nlast".encode())
    rows = _rows(src, "txt")
    assert [r.text for r in rows] == ["one", "two\u2028still two", "", "last"]
    assert [r.at for r in rows] == [1, 2, 3, 4] and _problems(rows) == []


def test_txt_non_utf8_line_is_a_row_problem_with_its_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine\ncaf\xe9\nfine again\n")
    rows = _rows(src, "txt")
    assert _problems(rows) == [f"{src}:2 is not UTF-8 text (byte 0xe9); convert the file to UTF-8"]
    assert [r.text for r in rows if r.problem is None] == ["fine", "fine again"]


def test_jsonl_fields_ids_and_every_problem_by_line(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [{"text": "a", "id": 7}, {"body": "no text", "id": 8}, {"text": None, "id": 9}, {"text": 5, "id": 10},
             {"text": "b", "id": None}, {"text": "c", "id": 1.5}, [1, 2], {"text": "\ud800", "id": 12},
             {"text": "d", "id": "s"}]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n{broken\n", encoding="utf-8")
    rows = _rows(src, "jsonl", Columns("text", "id"))
    assert [(r.text, r.id) for r in rows if r.problem is None] == [("a", 7), ("d", "s")]
    assert _problems(rows) == [
        f'{src}:2 needs a "text" field holding a string',
        f'{src}:3 has a null "text"',
        f'{src}:4 has a "text" of type int, not a string',
        f'{src}:5 has a null "id" (--id-column)',
        f'{src}:6 has a "id" of type float; ids must be integers or strings',
        f"{src}:7 is a JSON list, not an object",
        f'{src}:8 has a "text" that is not valid UTF-8 text: a lone surrogate U+D800 at character 0',
        f"{src}:11 is not JSON (Expecting property name enclosed in double quotes)",
    ]  # line 10 is blank: no row


def test_csv_header_quoted_newlines_and_positions(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b'\xef\xbb\xbfid,body\r\n1,"first, with comma"\r\n2,"spans\ntwo lines"\n3,caf\xe9\n4\n\n5,""\n')
    rows = _rows(src, "csv", Columns("body", "id"))
    assert [(r.text, r.id, r.at) for r in rows if r.problem is None] == [
        ("first, with comma", "1", 2), ("spans\ntwo lines", "2", 3), ("", "5", 8)]
    assert _problems(rows) == [f"{src}:5 is not UTF-8 text (byte 0xe9); convert the file to UTF-8",
                               f'{src}:6 has no "body" field (1 fields)']


def test_csv_without_the_column_is_refused_up_front(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("title,body\nx,y\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r'in.csv has no column "text" \(--text-column\); its header has '
                                                 r"title, body"):
        readers.check(Input(str(src), "csv"), Columns())
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InvalidInputError, match="is empty: a CSV input needs a header"):
        readers.check(Input(str(tmp_path / "empty.csv"), "csv"), Columns())


def test_parquet_by_batches_with_nulls_and_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "PARQUET_BATCH", 3)  # rows are numbered across batches
    src = tmp_path / "in.parquet"
    texts = ["a", "b", None, "d", "e", None, "g"]
    pq.write_table(pa.table({"text": texts, "key": list(range(100, 107))}), src, row_group_size=4)
    rows = _rows(src, "parquet", Columns("text", "key"))
    assert [(r.text, r.id, r.at) for r in rows if r.problem is None] == [
        ("a", 100, 0), ("b", 101, 1), ("d", 103, 3), ("e", 104, 4), ("g", 106, 6)]
    assert _problems(rows) == [f'{src} row 2 has a null "text"', f'{src} row 5 has a null "text"']


def test_parquet_columns_checked_up_front(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [1, 2], "when": pa.array([1.5, 2.5])}), src)
    with pytest.raises(InvalidInputError, match=r'column "text" of .* holds int64, not strings'):
        readers.check(Input(str(src), "parquet"), Columns())
    with pytest.raises(InvalidInputError, match=r'has no column "body" .* its columns are text, when'):
        readers.check(Input(str(src), "parquet"), Columns("body"))
    pq.write_table(pa.table({"text": ["x"], "when": pa.array([1.5])}), src)
    with pytest.raises(InvalidInputError, match=r'column "when" .* holds double; ids must be integers or strings'):
        readers.check(Input(str(src), "parquet"), Columns("text", "when"))
    (tmp_path / "not.parquet").write_text("plain text")
    with pytest.raises(InvalidInputError, match=r"not\.parquet as Parquet"):
        readers.check(Input(str(tmp_path / "not.parquet"), "parquet"), Columns())


def test_txt_takes_no_id_column(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="--id-column needs JSONL, CSV or Parquet"):
        readers.check(Input(str(tmp_path / "x.txt"), "txt"), Columns("text", "id"))


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"cannot read .*nope.txt: No such file"):
        _rows(tmp_path / "nope.txt", "txt")
    with pytest.raises(InvalidInputError, match=r"cannot read .*nope.txt: No such file"):
        fingerprint(str(tmp_path / "nope.txt"), "txt")


def test_standard_input_is_read_and_tallied(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"text": "alpha"}\r\n{"text": "beta"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    tally = readers.Tally()
    rows = list(readers.read(Input("-", "jsonl"), Columns(), tally))
    assert [r.text for r in rows] == ["alpha", "beta"]
    assert tally.size == len(data) and tally.digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_resolve_globs_formats_and_refusals(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.csv", "d.parquet", "e.ndjson", "notes"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.jsonl").write_text("")
    got = resolve([str(tmp_path / "*.jsonl"), str(tmp_path / "c.csv"), "-", str(tmp_path / "**" / "f.jsonl")])
    assert [(Path(p).name, f) for p, f in got] == [("a.jsonl", "jsonl"), ("b.jsonl", "jsonl"), ("c.csv", "csv"),
                                                   ("-", "txt"), ("f.jsonl", "jsonl")]
    assert [f for _, f in resolve([str(tmp_path / n) for n in ("d.parquet", "e.ndjson", "notes")])] == [
        "parquet", "jsonl", "txt"]
    assert [f for _, f in resolve([str(tmp_path / "notes")], "jsonl")] == ["jsonl"]
    with pytest.raises(InvalidInputError, match=r"no file matches --input .*\*.txt"):
        resolve([str(tmp_path / "*.txt")])
    with pytest.raises(InvalidInputError, match="only once"):
        resolve(["-", "-"])
    with pytest.raises(InvalidInputError, match="Parquet cannot be read from standard input"):
        resolve(["-"], "parquet")


def test_fingerprint_sizes_hashes_and_counts(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\nthree")
    got = fingerprint(str(src), "txt")
    assert (got.size, got.rows, got.sha256) == (13, 3, hashlib.sha256(b"one\ntwo\nthree").hexdigest())
    assert fingerprint(str(src), "txt", got) is got  # same size and mtime: trusted, not read again
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a"] * 5}), table)
    assert fingerprint(str(table), "parquet").rows == 5
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("text\na\nb\n")
    inputs = [got, fingerprint(str(table), "parquet"), fingerprint(str(csv_file), "csv")]
    assert expected_rows(inputs) == 3 + 5 + 2  # a CSV's header is no row
    assert expected_rows([*inputs, Input("-", "txt")]) is None
