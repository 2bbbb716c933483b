"""Corpus-scale embedding: files or standard input in, Parquet shards and a run record out: in one process,
in worker processes on several GPUs or CPU slices of one machine (``BulkOptions.devices`` / ``workers``),
or on a Ray cluster (``BulkOptions.ray``; ``embedrt.bulk.ray``, which also has ``embed_dataset``).

``embedrt embed ART --input FILES... --output DIR/`` runs ``job.run``; see docs/bulk.md. Reading JSONL,
CSV and TXT needs nothing beyond the runtime; Parquet (read or written) needs pyarrow, the ``bulk``
extra (``pip install 'embedrt[bulk]'``), imported only where it is used (``arrow.py``).

Modules: ``inputs`` (files, globs, formats, fingerprints), ``readers`` (rows, with the place and reason
of each bad one), ``shards`` (Parquet files written atomically), ``record`` (the run record and the
output directory: refuse, resume, overwrite), ``shardbook`` (rows cut into shards and recorded, whoever
embeds them), ``progress``, ``job`` (preparing a job, and the loop in this process), ``worker`` (a
model that writes the shards it is handed), ``parallel`` (the loop that hands shards to a pool of
them), ``devices`` (worker processes on this machine) and ``ray`` (Ray actors).
"""

from __future__ import annotations

from .job import SHARD_SIZE, BulkOptions, RayOptions, run
from .readers import Columns
from .record import RECORD, Record

__all__ = ["RECORD", "SHARD_SIZE", "BulkOptions", "Columns", "RayOptions", "Record", "run"]
