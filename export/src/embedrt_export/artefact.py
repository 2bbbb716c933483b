"""Atomic artefact directories: build in a hidden sibling, move into place only when complete.

An interrupted or failed export leaves at most a ``.NAME.partial-*`` directory, which has no
``manifest.json`` at its final path and is cleaned up by the next export to the same place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedrt.manifest import MANIFEST_NAME
from embedrt.storage import atomic_directory

from .errors import ExportError
from .source import file_sha256


@contextmanager
def staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out`` if the block completes with a manifest in it."""
    out = out.resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    with atomic_directory(out) as staging:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise ExportError("internal error: artefact finished without a manifest")


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(root / name) for name in names}


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
