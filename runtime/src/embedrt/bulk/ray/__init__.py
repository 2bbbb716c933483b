"""Corpus embedding on a Ray cluster; Ray is imported only when one of these runs (``embedrt[ray]``).

- ``embed_dataset(ds, artefact, ...)``: a Ray Data ``Dataset`` of texts in, one of ``id`` and
  ``embedding`` out (``map_batches`` with one ``Embedder`` per actor).
- ``embedrt embed ART --input ... --output DIR/ --ray [ADDRESS]`` (``BulkOptions.ray``): the local
  corpus job, its shards embedded and written by Ray actors; the same layout, record and resume rule.

Modules: ``cluster`` (importing Ray, connecting, sizing the actors), ``worker`` (what runs in the
actors), ``dataset`` (``embed_dataset``), ``driver`` (the ``--ray`` job). See docs/bulk.md.
"""

from __future__ import annotations

from .dataset import embed_dataset

__all__ = ["embed_dataset"]
