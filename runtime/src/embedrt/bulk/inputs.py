"""Which files a job reads, in which format, and what they were: size, mtime, sha256, row count.

``--input`` takes files, globs (``data/*.parquet``, ``**`` too) and ``-`` for standard input; the
format comes from ``--input-format`` or the suffix (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``/
``.pq``, anything else is TXT). A fingerprint is taken before any work: the run record keeps it, and
a resumed run compares it, so that shards made from one input are never completed from another.
Hashing reads each file once (at disk speed, a second or so a GB); a file whose size and mtime are
those recorded is trusted without being read again.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .arrow import pyarrow

FORMATS = ("txt", "jsonl", "csv", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
STDIN = "-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Input:
    """One input. ``rows``: Parquet's row count; for the line formats their line count, which is the
    number of rows of a TXT file and an estimate for JSONL and CSV (blank lines, a header, quoted
    newlines). None where unknown (standard input)."""

    path: str  # as given or as a glob expanded it; "-" is standard input
    format: str
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    rows: int | None = None

    @property
    def identity(self) -> tuple[Any, ...]:
        """What must be equal for two runs to have read the same input (mtime may differ). Standard input
        is known only once read: a resumed run checks the rows it reads again instead (``job``)."""
        if self.path == STDIN:
            return self.path, self.format, None, None
        return self.path, self.format, self.size, self.sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Input:
        return cls(str(data["path"]), str(data["format"]), data.get("size"), data.get("mtime_ns"), data.get("sha256"),
                   data.get("rows"))


def format_of(path: str, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise InvalidInputError(f"--input-format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    return SUFFIXES.get(Path(path).suffix.lower(), "txt") if path != STDIN else "txt"


def resolve(patterns: Sequence[str], given: str | None = None) -> list[tuple[str, str]]:
    """``(path, format)`` for each input, globs expanded (sorted), in the order given."""
    found: list[tuple[str, str]] = []
    for pattern in patterns:
        if pattern == STDIN:
            paths = [STDIN]
        elif glob.has_magic(pattern):
            paths = sorted(p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p))
            if not paths:
                raise InvalidInputError(f"no file matches --input {pattern}")
        else:
            paths = [pattern]
        found += [(p, format_of(p, given)) for p in paths]
    if [p for p, _ in found].count(STDIN) > 1:
        raise InvalidInputError("standard input (-) can be read only once")
    if (STDIN, "parquet") in found:
        raise InvalidInputError("Parquet cannot be read from standard input (it needs seeking); pass the file")
    return found


def fingerprint(path: str, fmt: str, known: Input | None = None) -> Input:
    """The input as it is now; ``known`` (from a run record) is reused where size and mtime are equal."""
    if path == STDIN:
        return Input(path, fmt)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not os.path.isfile(path):
        raise InvalidInputError(f"cannot read {path}: not a file")
    if known is not None and (known.path, known.format, known.size, known.mtime_ns) == (
            path, fmt, stat.st_size, stat.st_mtime_ns) and known.sha256:
        return known
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows = lines + (last != b"\n")  # an unterminated last line is a line
    if fmt == "parquet":
        rows = _parquet_rows(path)
    return Input(path, fmt, stat.st_size, stat.st_mtime_ns, digest.hexdigest(), rows)


def _parquet_rows(path: str) -> int:
    _, pq = pyarrow("reading Parquet")
    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise InvalidInputError(f"cannot read {path} as Parquet: {exc}") from exc


def expected_rows(inputs: Sequence[Input]) -> int | None:
    """Rows to expect in all (for a progress bar's total and ETA), or None where one is unknown."""
    if any(i.rows is None for i in inputs):
        return None
    return sum(max(0, (i.rows or 0) - (i.format == "csv")) for i in inputs)  # a CSV's header is no row


__all__ = ["FORMATS", "STDIN", "Input", "expected_rows", "fingerprint", "format_of", "resolve"]
