"""Rows from inputs, streamed: TXT and JSONL line by line, CSV record by record, Parquet batch by batch.

A row is one text to embed with its id (the ``--id-column`` value, or None: the job then uses the
row's index, 0-based across all inputs). A row that cannot be embedded (no text field, a null text,
a line that is not UTF-8 or not JSON, a bad id) still comes out, with a ``Problem`` saying where and
why, so that the job decides whether to stop or skip it. What makes a whole file unreadable (it
cannot be opened, has no such column, is not Parquet) raises ``InvalidInputError`` instead.

Positions: TXT, JSONL and CSV problems name the line (1-based, as editors count: ``file:LINE``);
Parquet ones the row (0-based, as ``table.slice`` and pandas count: ``file row N``). A JSONL blank
line is no row; a CSV's header is none either.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from ..errors import InvalidInputError
from ..tokenizer import text_problem
from .arrow import pyarrow
from .inputs import STDIN, Input

BOM = b"\xef\xbb\xbf"
PARQUET_BATCH = 1024  # rows decoded at a time: bounds what a Parquet input holds in memory
INT64 = (-(2**63), 2**63)
csv.field_size_limit(2**31 - 1)  # a long passage is one field; the default limit (128 KiB) would refuse it


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    id: str | None = None


@dataclass(frozen=True)
class Problem:
    """Why a row is not embedded, and where it is."""

    input: str
    reason: str
    line: int | None = None  # 1-based (TXT, JSONL, CSV)
    row: int | None = None  # 0-based (Parquet)

    def __str__(self) -> str:
        return f"{self.input}:{self.line} {self.reason}" if self.line is not None else \
            f"{self.input} row {self.row} {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        place = {"line": self.line} if self.line is not None else {"row": self.row}
        return {"input": self.input, **place, "reason": self.reason}


class Row(NamedTuple):
    text: str  # "" where ``problem`` is set
    id: Any  # the --id-column value (int or str); None without one
    at: int  # its line (TXT, JSONL, CSV: 1-based) or row (Parquet: 0-based) in its input
    problem: Problem | None = None


def problem_at(source: Input, at: int, reason: str) -> Problem:
    """A problem found after reading, placed as the reader places its own."""
    return Problem(source.path, reason, row=at) if source.format == "parquet" else Problem(source.path, reason, line=at)


class Tally:
    """Bytes read from standard input and their sha256: its fingerprint, known once it has been read."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self.digest.update(data)


def check(source: Input, columns: Columns) -> None:
    """Refuse, before any work, an input whose format cannot give ``columns`` (only the header is read)."""
    if source.format == "txt" and columns.id is not None:
        raise InvalidInputError(f"{source.path} is TXT (one text per line, no columns): --id-column needs JSONL, "
                                "CSV or Parquet inputs")
    if source.path == STDIN:
        return
    if source.format == "parquet":
        _parquet_columns(source.path, columns)
    elif source.format == "csv":
        with _opened(source.path) as stream:
            _csv_header(_Tracked(_decoded(stream)), source.path, columns)


def read(source: Input, columns: Columns, tally: Tally | None = None) -> Iterator[Row]:
    """The rows of one input, in order; ``tally`` counts and hashes the bytes of a line format's input."""
    if source.format == "parquet":
        yield from _parquet(source.path, columns)
        return
    with _opened(source.path) as stream:
        lines = _decoded(stream, tally)
        try:
            if source.format == "txt":
                yield from _txt(lines, source.path)
            elif source.format == "jsonl":
                yield from _jsonl(lines, source.path, columns)
            else:
                yield from _csv(_Tracked(lines), source.path, columns)
        except OSError as exc:  # a read that fails midway (a disk error, a file cut off by another process)
            raise InvalidInputError(f"cannot read {source.path}: {exc.strerror or exc}") from exc


@contextmanager
def _opened(path: str) -> Iterator[IO[bytes]]:
    if path == STDIN:
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # closed by the with below
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with stream:
        yield stream


def _decoded(stream: IO[bytes], tally: Tally | None = None) -> Iterator[tuple[int, str, int | None]]:
    """(line number, the line with its ending, the first byte that is not UTF-8 or None), split on LF only.

    A line that is not UTF-8 is decoded with surrogate escapes, so that the reader can still find where
    it ends (a CSV record spans lines) and report it instead of stopping."""
    for number, raw in enumerate(stream, start=1):
        if tally is not None:
            tally.update(raw)
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]  # an encoding mark, not text
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield number, raw.decode("utf-8", "surrogateescape"), raw[exc.start]


def _bad_line(path: str, number: int, reason: str) -> Row:
    return Row("", None, number, Problem(path, reason, line=number))


def _not_utf8(byte: int) -> str:
    return f"is not UTF-8 text (byte 0x{byte:02x}); convert the file to UTF-8"


def _txt(lines: Iterator[tuple[int, str, int | None]], path: str) -> Iterator[Row]:
    for number, line, bad in lines:
        if bad is not None:
            yield _bad_line(path, number, _not_utf8(bad))
            continue
        if line.endswith("\n"):
            line = line[:-1]
        yield Row(line[:-1] if line.endswith("\r") else line, None, number)


def _jsonl(lines: Iterator[tuple[int, str, int | None]], path: str, columns: Columns) -> Iterator[Row]:
    for number, line, bad in lines:
        if bad is not None:
            yield _bad_line(path, number, _not_utf8(bad))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _bad_line(path, number, f"is not JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield _bad_line(path, number, f"is a JSON {type(record).__name__}, not an object")
            continue
        text: Any = record.get(columns.text)
        id_ = record.get(columns.id) if columns.id else None
        reason = _field_problem(record, columns) or _value_problem(text, id_, columns)
        yield _bad_line(path, number, reason) if reason else Row(text, id_, number)


def _field_problem(record: dict[str, Any], columns: Columns) -> str | None:
    if columns.text not in record:
        return f'needs a "{columns.text}" field holding a string'
    if columns.id is not None and columns.id not in record:
        return f'needs a "{columns.id}" field (--id-column)'
    return None


def _value_problem(text: Any, id_: Any, columns: Columns) -> str | None:
    """What is wrong with a row's text or id value (the first thing), or None."""
    if text is None:
        return f'has a null "{columns.text}"'
    if not isinstance(text, str):
        return f'has a "{columns.text}" of type {type(text).__name__}, not a string'
    problem = text_problem(text)  # a lone surrogate, written in JSON as "\ud800"
    if problem is not None:
        return f'has a "{columns.text}" that {problem}'
    if columns.id is None:
        return None
    if id_ is None:
        return f'has a null "{columns.id}" (--id-column)'
    if isinstance(id_, bool) or not isinstance(id_, (int, str)):
        return f'has a "{columns.id}" of type {type(id_).__name__}; ids must be integers or strings'
    if isinstance(id_, int) and not INT64[0] <= id_ < INT64[1]:
        return f'has a "{columns.id}" outside the 64-bit integer range'
    return None


class _Tracked:
    """Lines for the csv reader (a record may span several), noting the last line number handed out and
    the first byte that was not UTF-8 since the caller last cleared ``bad``."""

    def __init__(self, lines: Iterator[tuple[int, str, int | None]]) -> None:
        self._lines = lines
        self.line = 0
        self.bad: tuple[int, int] | None = None

    def __iter__(self) -> _Tracked:
        return self

    def __next__(self) -> str:
        number, text, bad = next(self._lines)
        self.line = number
        if bad is not None and self.bad is None:
            self.bad = (number, bad)
        return text


def _csv_header(lines: _Tracked, path: str, columns: Columns) -> tuple[int, int | None]:
    """The positions of the text and id columns in the header (the first record), or an error naming them."""
    try:
        header = next(csv.reader(lines), None)
    except csv.Error as exc:
        raise InvalidInputError(f"cannot read {path} as CSV: {exc}") from exc
    if header is None:
        raise InvalidInputError(f"{path} is empty: a CSV input needs a header naming its columns")
    for name, flag in ((columns.text, "--text-column"), (columns.id, "--id-column")):
        if name is not None and name not in header:
            raise InvalidInputError(f'{path} has no column "{name}" ({flag}); its header has '
                                    f"{', '.join(header[:20]) or 'no names'}")
    return header.index(columns.text), header.index(columns.id) if columns.id is not None else None


def _csv(lines: _Tracked, path: str, columns: Columns) -> Iterator[Row]:
    """Records as the csv module reads them, each named by its first line."""
    text_at, id_at = _csv_header(lines, path, columns)
    records = csv.reader(lines)
    while True:
        first = lines.line + 1
        try:
            fields = next(records, None)
        except csv.Error as exc:
            raise InvalidInputError(f"cannot read {path} as CSV at line {lines.line}: {exc}") from exc
        if fields is None:
            return
        bad, lines.bad = lines.bad, None
        if bad is not None:
            yield _bad_line(path, bad[0], _not_utf8(bad[1]))
        elif not fields:
            continue  # a blank line is no record
        elif len(fields) <= max(text_at, id_at or 0):
            missing = columns.text if len(fields) <= text_at else columns.id
            yield _bad_line(path, first, f'has no "{missing}" field ({len(fields)} fields)')
        else:
            text, id_ = fields[text_at], fields[id_at] if id_at is not None else None
            reason = _value_problem(text, id_, columns)
            yield _bad_line(path, first, reason) if reason else Row(text, id_, first)


def _parquet_columns(path: str, columns: Columns) -> Any:
    """The Parquet file, opened, once its schema is checked to hold the columns (text a string column)."""
    pa, pq = pyarrow("reading Parquet")
    try:
        parquet = pq.ParquetFile(path)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # ArrowInvalid: not Parquet
        raise InvalidInputError(f"cannot read {path} as Parquet: {exc}") from exc
    schema = parquet.schema_arrow
    for name, flag in ((columns.text, "--text-column"), (columns.id, "--id-column")):
        if name is not None and name not in schema.names:
            raise InvalidInputError(f'{path} has no column "{name}" ({flag}); its columns are '
                                    f"{', '.join(schema.names[:20])}")
    kind = schema.field(columns.text).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"):
        raise InvalidInputError(f'column "{columns.text}" of {path} holds {kind}, not strings (--text-column)')
    if columns.id is not None:
        kind = schema.field(columns.id).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InvalidInputError(f'column "{columns.id}" of {path} holds {kind}; ids must be integers or '
                                    "strings (--id-column)")
    return parquet


def _parquet(path: str, columns: Columns) -> Iterator[Row]:
    """Row by row over batches of ``PARQUET_BATCH`` rows: one batch of one column or two in memory."""
    parquet = _parquet_columns(path, columns)
    wanted = [columns.text] if columns.id is None else [columns.text, columns.id]
    start = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=wanted):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if columns.id is not None else [None] * len(texts)
            for offset, (text, id_) in enumerate(zip(texts, ids, strict=True)):
                reason = _value_problem(text, id_, columns)
                at = start + offset
                yield Row("", None, at, Problem(path, reason, row=at)) if reason else Row(text, id_, at)
            start += len(texts)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path} after row {start}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):  # ArrowInvalid: a corrupt page
            raise InvalidInputError(f"cannot read {path} after row {start}: {exc}") from exc
        raise


__all__ = ["Columns", "Problem", "Row", "check", "read"]
