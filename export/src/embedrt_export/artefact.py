"""Atomic artefact directories: build in a hidden sibling, move into place only when complete.

An interrupted or failed export leaves at most a ``.NAME.partial-*`` directory, which has no
``manifest.json`` at its final path and is cleaned up by the next export to the same place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedrt.manifest import MANIFEST_NAME

from .errors import ExportError
from .source import file_sha256


@contextmanager
def staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out`` if the block completes without error."""
    out = out.resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the artefact is meant to be shared
    try:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise ExportError("internal error: artefact finished without a manifest")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(root / name) for name in names}


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
