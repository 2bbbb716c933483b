"""Shared by the corpus-mode tests (test_bulk_job, test_bulk_devices, test_bulk_ray): inputs of every format,
reading a run back and comparing two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedrt.bulk import RECORD, Record


def record_of(out: Path) -> dict[str, Any]:
    return json.loads((out / RECORD).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def table_of(out: Path) -> tuple[list[Any], np.ndarray]:
    table = pq.read_table(out)  # what any Parquet reader sees: hidden and _-prefixed files skipped
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def write_jsonl(path: Path, texts: list[str], ids: list[Any] | None = None) -> Path:
    rows = [{"text": t} if ids is None else {"text": t, "doc": i} for t, i in zip(texts, ids or texts, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_corpus(folder: Path, texts: list[str]) -> list[Path]:
    """``texts`` (at least 44) over four inputs of every format: 20 JSONL, 13 CSV, 10 Parquet, the rest TXT (CRLF)."""
    folder.mkdir()
    a = write_jsonl(folder / "a.jsonl", texts[:20])
    b = folder / "b.csv"
    b.write_text("n,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts[20:33])), encoding="utf-8")
    c = folder / "c.parquet"
    pq.write_table(pa.table({"text": texts[33:43]}), c, row_group_size=4)
    d = folder / "d.txt"
    d.write_text("\r\n".join(texts[43:]) + "\r\n", encoding="utf-8")
    return [a, b, c, d]


def with_bad_rows(folder: Path, texts: list[str]) -> list[Path]:
    """``write_corpus`` and a fifth input, JSONL, of two good rows around two bad ones (not JSON; a null text)."""
    inputs = write_corpus(folder, texts)
    bad = folder / "e.jsonl"
    bad.write_text(json.dumps({"text": "kept"}) + "\n{not json\n" + json.dumps({"text": None}) + "\n"
                   + json.dumps({"text": "last"}) + "\n", encoding="utf-8")
    return [*inputs, bad]


TIMING = ("seconds", "started", "finished")  # the only record fields a second run may change


def same_run(out: Path, want: Path) -> None:
    """Byte-identical shards and the same record (but for its times) as the run in ``want``."""
    got, expected = record_of(out), record_of(want)
    assert {k: v for k, v in got.items() if k not in TIMING} == {k: v for k, v in expected.items() if k not in TIMING}
    for entry in expected["shards"]:
        assert (out / entry["file"]).read_bytes() == (want / entry["file"]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir())  # no strays, no temporaries


class Interrupted(Exception):
    pass


def stop_after(shards: int):  # type: ignore[no-untyped-def]
    """An ``after_shard`` hook that interrupts the run once ``shards`` shards are recorded."""
    def hook(record: Record) -> None:
        if len(record.shards) == shards:
            raise Interrupted

    return hook
