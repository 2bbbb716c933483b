"""Artefacts at a URL (``s3://bucket/engines/qwen3-embedding-0.6b``, ``gs://...``, ``hdfs://...``,
``file:///...``): copied once into a local cache, verified, and loaded from there.

A cluster's nodes need the artefact as files (ONNX Runtime and TensorRT open paths); where they share
no file system, each node fetches its own copy. Any URL pyarrow's file systems take works
(``pyarrow.fs.FileSystem.from_uri``: S3 and S3-compatible stores, with ``?endpoint_override=HOST:PORT
&scheme=http`` and the like in the URL; Google Cloud Storage; HDFS), with their usual credentials
(``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...). pyarrow is the
runtime's ``bulk`` extra, imported only when a URL is given.

The copy: the remote ``manifest.json`` is read first; a cached copy made from the same manifest
(byte for byte) is used as it is. Otherwise every file under the URL (the manifest's files, each
checked against its sha256, and the engine store's) is downloaded into a hidden staging directory
that is renamed into place only once complete (``storage.atomic_directory``), so an interrupted
download leaves nothing that looks complete, and processes fetching at once (two actors on one node)
end with one copy. The cache is ``EMBEDRT_CACHE`` (default ``~/.cache/embedrt``) + ``/artefacts``; each
copy is named after the artefact and a digest of its URL.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ArtefactError, EmbedrtError
from .manifest import MANIFEST_NAME, Manifest, load_manifest, parse_manifest
from .storage import atomic_directory

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CHUNK = 8 << 20  # bytes per read while downloading


def is_url(ref: str | Path) -> bool:
    """``ref`` names an artefact by URL (``scheme://...``), not by path."""
    return isinstance(ref, str) and bool(_URL.match(ref))


def cache_root() -> Path:
    base = os.environ.get("EMBEDRT_CACHE", "").strip() or str(Path.home() / ".cache" / "embedrt")
    return Path(base).expanduser() / "artefacts"


def absolute(ref: str | Path) -> str:
    """``ref`` as every process can take it: a URL as it is, a path made absolute."""
    return str(ref) if is_url(ref) else str(Path(ref).resolve())


def manifest_bytes(ref: str | Path) -> bytes:
    """The artefact's ``manifest.json`` as stored (at a URL: read from there, nothing else fetched)."""
    if is_url(ref):
        fs, root = _filesystem(str(ref))
        return _read(fs, _join(root, MANIFEST_NAME), str(ref))
    return (Path(ref) / MANIFEST_NAME).read_bytes()


def read_manifest(url: str) -> Manifest:
    """The manifest of the artefact at ``url``, read from there (nothing else is fetched)."""
    return parse_manifest(manifest_bytes(url), f"{url}/{MANIFEST_NAME}")


def local_artefact(ref: str | Path) -> Path:
    """The artefact as a local directory: ``ref`` itself for a path, else the cached copy of the URL."""
    if not is_url(ref):
        return Path(ref)
    assert isinstance(ref, str)
    return fetch(ref)


def fetch(url: str, cache: Path | None = None) -> Path:
    """The local copy of the artefact at ``url``, downloaded if the cache has none made from its manifest."""
    fs, root = _filesystem(url)
    manifest = _read(fs, _join(root, MANIFEST_NAME), url)
    name = PurePosixPath(root.rstrip("/")).name or "artefact"
    target = (cache or cache_root()) / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    if _same_manifest(target, manifest):
        return target
    stale = target.exists()  # a copy of an earlier export at this URL: replaced; else another fetcher's wins
    try:
        with atomic_directory(target, replace=stale) as staging:
            (staging / MANIFEST_NAME).write_bytes(manifest)
            files = load_manifest(staging).files  # validated: a URL that holds no artefact says so here
            _download(fs, root, staging, files, url)
    except FileExistsError:
        if not _same_manifest(target, manifest):
            raise ArtefactError(f"the artefact at {url} changed while it was being copied; load it again") from None
    except OSError as exc:
        raise ArtefactError(f"could not copy the artefact at {url} into {target.parent}: {exc}") from exc
    return target


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError as exc:
        raise EmbedrtError(f"an artefact URL ({url}) needs pyarrow's file systems: pip install 'embedrt[bulk]', "
                           "or give a local path") from exc
    try:
        return fs.FileSystem.from_uri(url)
    except Exception as exc:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise ArtefactError(f"cannot open the artefact URL {url}: {exc}") from exc


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def _read(fs: Any, path: str, url: str) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except FileNotFoundError:
        raise ArtefactError(f"{url} has no {MANIFEST_NAME}: not an embedrt artefact, or an export that did not "
                            "finish uploading") from None
    except OSError as exc:
        raise ArtefactError(f"cannot read {MANIFEST_NAME} at {url}: {exc}") from exc


def _same_manifest(target: Path, manifest: bytes) -> bool:
    try:
        return (target / MANIFEST_NAME).read_bytes() == manifest
    except OSError:
        return False


def _download(fs: Any, root: str, staging: Path, files: dict[str, str], url: str) -> None:
    """Every file under ``root`` but hidden ones and the manifest; the manifest's files must all be there."""
    from pyarrow.fs import FileSelector, FileType

    base = root.rstrip("/")
    found = []
    for info in fs.get_file_info(FileSelector(base, recursive=True)):
        relative = info.path[len(base):].lstrip("/")
        if info.type == FileType.File and relative != MANIFEST_NAME \
                and not any(part.startswith(".") for part in PurePosixPath(relative).parts):
            found.append(relative)
    missing = sorted(set(files) - set(found))
    if missing:
        raise ArtefactError(f"the artefact at {url} lacks {', '.join(missing[:5])}"
                            f"{' and more' if len(missing) > 5 else ''}: its upload is incomplete")
    for relative in sorted(found):
        local = staging.joinpath(*PurePosixPath(relative).parts)
        local.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with fs.open_input_stream(_join(base, relative)) as stream, local.open("wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        expected = files.get(relative)
        if expected is not None and digest.hexdigest() != expected:
            raise ArtefactError(f"{relative} at {url} does not match the manifest's sha256: the upload is damaged "
                                "or from another export")


__all__ = ["absolute", "cache_root", "fetch", "is_url", "local_artefact", "manifest_bytes", "read_manifest"]
