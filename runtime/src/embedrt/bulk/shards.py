"""Parquet shards: ``part-NNNNNN.parquet`` with columns ``id`` and ``embedding``, each written atomically.

``id`` is int64 or string (the ``--id-column`` values, carried unchanged; without one, the row's index
across all inputs); ``embedding`` a fixed-size list of float32, one row per embedded text. A shard is
one row group, written under a hidden temporary name and renamed into place when complete, so a
directory of shards can be read by anything that reads Parquet (``pyarrow.parquet.read_table(dir)``,
pandas, DuckDB, Spark, Ray Data): their discovery skips the hidden temporaries and the ``_``-prefixed
run record, and lists the shards in name order, which is row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..storage import atomic_file
from .arrow import pyarrow

SHARD_PREFIX, SHARD_SUFFIX = "part-", ".parquet"
ID_TYPES = ("int64", "string")


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def is_shard_name(name: str) -> bool:
    middle = name[len(SHARD_PREFIX):-len(SHARD_SUFFIX)]
    return name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX) and middle.isdigit()


def write_shard(path: Path, ids: Sequence[Any], id_type: str, vectors: np.ndarray) -> dict[str, Any]:
    """Write ``ids`` and ``vectors`` (float32 ``[n, d]``) to ``path`` atomically; its size and sha256."""
    pa, pq = pyarrow("writing Parquet shards")
    column = _from_numpy(pa, pa.int64(), np.asarray(ids, dtype=np.int64)) if id_type == "int64" else _strings(pa, ids)
    table = pa.table({"id": column, "embedding": embedding_array(vectors)})
    with atomic_file(path) as tmp:
        # Floats neither dictionary-encode nor compress usefully; statistics only for the ids.
        pq.write_table(table, tmp, row_group_size=max(1, len(vectors)), use_dictionary=False,
                       write_statistics=["id"])
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def embedding_array(vectors: np.ndarray) -> Any:
    """float32 ``[n, d]`` as the shards' ``embedding`` column: a fixed-size list of float32, d per row."""
    pa, _ = pyarrow("writing Parquet shards")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(_from_numpy(pa, pa.float32(), vectors.reshape(-1)), vectors.shape[1])


# Arrays are built from buffers: pa.array() on a list or a NumPy array imports pandas where it is
# installed (to recognise its types), which costs a quarter of a second and tens of MB for nothing here.

def _from_numpy(pa: Any, kind: Any, values: np.ndarray) -> Any:
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _strings(pa: Any, values: Sequence[Any]) -> Any:
    data = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(data), [None, pa.py_buffer(offsets),
                                                               pa.py_buffer(b"".join(data))]).cast(pa.string())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shard_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the shard at ``path`` is not the one ``entry`` recorded (missing, other size or checksum), or None."""
    try:
        size = path.stat().st_size
    except OSError:
        return "is missing"
    if size != entry.get("bytes"):
        return f"has {size} bytes, not the {entry.get('bytes')} recorded"
    if file_sha256(path) != entry.get("sha256"):
        return "does not match its recorded sha256"
    return None


__all__ = ["ID_TYPES", "embedding_array", "file_sha256", "is_shard_name", "shard_name", "shard_problem", "write_shard"]
