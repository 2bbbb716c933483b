"""Resolve a MODEL argument (local directory or hub id) to a local directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ExportError, SourceNotFoundError

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def resolve_model_dir(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Return (local directory, resolved revision or None) for a directory or a hub id."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SourceNotFoundError(f"{path} has no config.json: pass a Hugging Face model directory")
        resolved: tuple[Path, str | None] = (path.resolve(), None)
    elif model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise SourceNotFoundError(f"no such directory: {model}")
    else:
        resolved = _download(model, revision)
    _check_config(resolved[0] / "config.json")
    return resolved


def _check_config(path: Path) -> None:
    """config.json must be a readable JSON object; say where it is broken instead of a traceback later."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ExportError(f"{path} must hold a JSON object, not {type(config).__name__}")


def _download(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise SourceNotFoundError("huggingface_hub is not installed; pass a local model directory") from exc
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "*.py"]
    try:
        local = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        try:
            local = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
        except Exception as exc:
            raise SourceNotFoundError(
                f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}); "
                "if this machine is offline, download the model elsewhere "
                f"(`hf download {repo_id} --local-dir DIR`) and pass that local directory"
            ) from exc
    return Path(local), revision or Path(local).name


def content_hash(model_dir: Path) -> str:
    """SHA-256 over the config, tokenizer and weight files: identifies the source exactly."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.rglob("*")):
        if file.is_file() and (file.suffix in _WEIGHT_SUFFIXES or file.suffix == ".json"):
            digest.update(str(file.relative_to(model_dir)).encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
