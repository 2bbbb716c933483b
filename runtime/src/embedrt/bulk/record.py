"""The run record (``_embedrt_run.json``) and the output directory it describes.

The record says what a directory of shards is: the settings that made it (artefact, model, precision,
prompt, dimensions, columns, shard size), the model as it ran, the inputs (size, mtime, sha256), each
finished shard (file, output rows, input rows, bytes, sha256, tokens, and a digest of the ids and
texts it was made from), the rows skipped and why, tokens and time. It is rewritten atomically after
every shard, and says ``"complete": true`` only once the last one is written: a directory whose record
does not is an interrupted run, which the same command resumes.

Shards are independent and named by index, and the record lists them with their row ranges, so any
writer that cuts the rows the same way (several processes, a Ray Data job) can produce the same layout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..storage import atomic_file, try_lock
from .inputs import Input
from .shards import is_shard_name, shard_problem

RECORD = "_embedrt_run.json"
FORMAT = "embedrt-bulk/1"
SKIPPED_LISTED = 10_000  # rows listed in the record (all are counted): a record stays small enough to rewrite
MODEL_KEYS = ("backend", "precision", "attention")  # how the model ran: must match to resume


@dataclass
class Record:
    settings: dict[str, Any]
    inputs: list[Input]
    model: dict[str, Any] = field(default_factory=dict)
    id_type: str | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    started: str = field(default_factory=lambda: now())
    finished: str | None = None
    complete: bool = False

    @property
    def rows(self) -> int:
        """Rows embedded in the finished shards."""
        return self.shards[-1]["rows"][1] if self.shards else 0

    @property
    def inputs_done(self) -> int:
        """Input rows (0-based index across all inputs) covered by the finished shards."""
        return self.shards[-1]["inputs"][1] if self.shards else 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "complete": self.complete, "rows": self.rows, "tokens": self.tokens,
                "seconds": round(self.seconds, 3), "started": self.started, "finished": self.finished,
                "settings": self.settings, "model": self.model, "id_type": self.id_type,
                "inputs": [i.to_dict() for i in self.inputs], "shards": self.shards,
                "skipped": self.skipped, "skipped_rows": self.skipped_rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {FORMAT!r}")
        return cls(settings=data["settings"], inputs=[Input.from_dict(i) for i in data["inputs"]],
                   model=data.get("model") or {}, id_type=data.get("id_type"), shards=list(data["shards"]),
                   skipped=int(data.get("skipped", 0)), skipped_rows=list(data.get("skipped_rows", [])),
                   tokens=int(data.get("tokens", 0)), seconds=float(data.get("seconds", 0.0)),
                   started=str(data.get("started", now())), finished=data.get("finished"),
                   complete=bool(data.get("complete")))

    def truncate(self, keep: int) -> None:
        """Keep the first ``keep`` shards only (the rest are redone), with their tokens and skipped rows."""
        self.shards = self.shards[:keep]
        end = self.inputs_done
        self.tokens = sum(s["tokens"] for s in self.shards)
        self.skipped = sum(s.get("skipped", 0) for s in self.shards)
        self.skipped_rows = [r for r in self.skipped_rows if r["index"] < end]
        self.complete, self.finished = False, None


# How a setting is named to someone at the command line.
FLAGS = {"artefact": "ARTEFACT", "manifest_sha256": "the artefact's manifest.json", "model": "the model",
         "prompt": "--query / --instruction (prompt)", "text_column": "--text-column", "id_column": "--id-column",
         "shard_size": "--shard-size"}


def differences(previous: Record, settings: dict[str, Any], inputs: list[Input]) -> list[str]:
    """What differs between the run recorded and this one, each as "name: recorded -> now"."""
    found = [f"{FLAGS.get(key, '--' + key)}: {_shown(previous.settings.get(key))} -> {_shown(value)}"
             for key, value in settings.items() if previous.settings.get(key) != value]
    before, current = [i.identity for i in previous.inputs], [i.identity for i in inputs]
    if [i[:2] for i in before] != [i[:2] for i in current]:
        found.append(f"inputs: {[i.path for i in previous.inputs]} -> {[i.path for i in inputs]}")
    else:
        found += [f"input {a[0]} changed (size {a[2]} -> {b[2]}, or its sha256)" for a, b in zip(before, current,
                                                                                             strict=True) if a != b]
    return found


def model_differences(previous: Record, model: dict[str, Any]) -> list[str]:
    if not previous.shards:
        return []
    return [f"{key}: {_shown(previous.model.get(key))} -> {_shown(model.get(key))}"
            for key in MODEL_KEYS if previous.model.get(key) != model.get(key)]


def _shown(value: Any) -> str:
    return "(none)" if value is None else repr(value) if isinstance(value, str) else str(value)


class Output:
    """The output directory, locked for one writer; creating and probing it is the first thing a job does."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self._lock: int | None = lock

    @classmethod
    def open(cls, path: Path) -> Output:
        """Create ``path`` if needed, prove it writable and lock it; refused with a message otherwise."""
        if path.exists() and not path.is_dir():
            raise InvalidInputError(f"cannot write --output {path}: it is a file, not a directory")
        probe = path / f".embedrt-probe.tmp-{os.getpid()}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InvalidInputError(f"cannot write --output {path}: {exc.strerror or exc}") from exc
        lock = try_lock(path)
        if lock is None:
            raise InvalidInputError(f"another embedrt run is writing into {path}; wait for it or choose another "
                                    "--output")
        output = cls(path, lock)
        # Hidden files (.DS_Store, a checkpoint folder) are left alone: dataset readers skip them too.
        foreign = [p.name for p in sorted(path.iterdir()) if not _ours(p.name) and not p.name.startswith(".")]
        if foreign:
            output.close()
            raise InvalidInputError(f"--output {path} holds files that are not an embedrt run's "
                                    f"({', '.join(foreign[:5])}); choose a new or empty directory")
        return output

    def previous(self) -> Record | None:
        """The record in the directory, None if there is none; refused if there are shards without one."""
        record = self.path / RECORD
        if not record.exists():
            if any(is_shard_name(p.name) for p in self.path.iterdir()):
                raise InvalidInputError(f"--output {self.path} holds shards but no {RECORD}: they cannot be "
                                        "resumed; pass --overwrite to start over")
            return None
        try:
            return Record.from_dict(json.loads(record.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"cannot read {record} ({exc}); pass --overwrite to start over") from exc

    def clear(self) -> None:
        """Remove what an embedrt run put here: the record, shards and temporaries."""
        for entry in self.path.iterdir():
            if _ours(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def remove_temporaries(self) -> None:
        """Hidden files left by a writer that was killed (the lock proves no writer is running now)."""
        for entry in self.path.iterdir():
            if entry.name.startswith(".") and ".tmp-" in entry.name:
                entry.unlink(missing_ok=True)

    def verified(self, record: Record, log: Callable[[str], None]) -> Record:
        """``record`` cut to the longest prefix of shards that are on disk as recorded; stray later shards
        (renamed into place just before an interruption, never recorded) are removed."""
        keep = len(record.shards)
        for n, entry in enumerate(record.shards):
            problem = shard_problem(self.path / entry["file"], entry)
            if problem is not None:
                log(f"{entry['file']} {problem}: redoing the run from it")
                keep = n
                break
        if keep < len(record.shards) or not record.complete:
            record.truncate(keep)  # also drops skipped rows past the shards, which the run finds again
        kept = {s["file"] for s in record.shards}
        for path in self.path.iterdir():
            if is_shard_name(path.name) and path.name not in kept:
                path.unlink()
        return record

    def save(self, record: Record) -> None:
        with atomic_file(self.path / RECORD) as tmp:
            tmp.write_text(_dumps(record.to_dict()), encoding="utf-8")

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _dumps(doc: dict[str, Any]) -> str:
    """JSON with one key a line, and one line per shard or skipped row: readable, and diffable."""
    def value(v: Any) -> str:
        if isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            return "[\n" + ",\n".join(f"  {json.dumps(e, ensure_ascii=False)}" for e in v) + "\n ]"
        return json.dumps(v, ensure_ascii=False)
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in doc.items()) + "\n}\n"


def _ours(name: str) -> bool:
    return name == RECORD or is_shard_name(name) or (name.startswith(".") and ".tmp-" in name)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


__all__ = ["FORMAT", "RECORD", "Output", "Record", "differences", "model_differences", "now"]
