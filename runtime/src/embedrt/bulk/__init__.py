"""Corpus-scale embedding on one machine: files or standard input in, Parquet shards and a run record out.

``embedrt embed ART --input FILES... --output DIR/`` runs ``job.run``; see docs/bulk.md. Reading JSONL,
CSV and TXT needs nothing beyond the runtime; Parquet (read or written) needs pyarrow, the ``bulk``
extra (``pip install 'embedrt[bulk]'``), imported only where it is used (``arrow.py``).

Modules: ``inputs`` (files, globs, formats, fingerprints), ``readers`` (rows, with the place and reason
of each bad one), ``shards`` (Parquet files written atomically), ``record`` (the run record and the
output directory: refuse, resume, overwrite), ``progress``, and ``job`` (the streaming loop).
"""

from __future__ import annotations

from .job import SHARD_SIZE, BulkOptions, run
from .readers import Columns
from .record import RECORD, Record

__all__ = ["RECORD", "SHARD_SIZE", "BulkOptions", "Columns", "Record", "run"]
