"""Atomic artefact directories: build in a hidden sibling, move into place only when complete.

An interrupted or failed export leaves at most a ``.NAME.partial-PID-*`` directory, which has no
``manifest.json`` at its final path and is cleaned up by a later export to the same place once its
owner has exited (see ``embedrt.storage``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedrt.manifest import MANIFEST_NAME
from embedrt.storage import atomic_directory, atomic_file

from ..errors import ExportError
from .source import file_sha256


@contextmanager
def staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out`` if the block completes with a manifest in it.

    Entered before any export work, so that an unusable ``--out`` (exists without ``--overwrite``,
    under a file, not writable) fails at once instead of after the export and its parity run.
    """
    out = out.expanduser().resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    step = "setup"  # OSErrors of the export itself ("body") pass through; only our own are about --out
    try:
        with atomic_directory(out, replace=overwrite) as staging:
            step = "body"
            yield staging
            step = "commit"
            if not (staging / MANIFEST_NAME).is_file():
                raise ExportError("internal error: artefact finished without a manifest")
    except OSError as exc:
        if step == "body":
            raise
        if step == "commit" and isinstance(exc, FileExistsError):
            raise ExportError(f"{out} was written by another export meanwhile; pass --overwrite to replace it "
                              "or choose another --out") from exc
        where = f" ({exc.filename})" if exc.filename else ""
        raise ExportError(f"cannot write the artefact at {out}: {exc.strerror or exc}{where}; "
                          "choose another --out") from exc


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(root / name) for name in names}


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
