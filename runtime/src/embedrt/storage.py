"""Atomic directories and files: build in a hidden sibling, rename into place only when complete.

Used by the export (artefact directories), the engine store (one directory per engine) and bulk jobs
(shards and their run record, ``atomic_file``), so a reader sees the old content or the new, and an
interrupted writer leaves only a hidden ``.NAME.partial-*`` directory or ``.NAME.tmp-*`` file, never a
complete-looking one.

Several writers may target the same place at once (two exports into one ``--out``, two servers
building one engine). Each staging directory is owned: its name carries the writer's pid and the
writer holds an exclusive ``flock`` on it until it is renamed or removed. A writer removes only
the staging directories whose owner is gone (pid not running here and lock free), never a live one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; ownership then rests on the pid alone
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _owner_pid(staging: Path) -> int | None:
    """The pid in ``.NAME.partial-PID-RANDOM``; None for names written before owners were recorded."""
    tail = staging.name.rpartition(".partial-")[2]
    pid, sep, _ = tail.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on directory ``path``; None if another process holds it."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_abandoned(final: Path) -> None:
    """Remove staging directories of ``final`` whose writer is gone; leave the live ones alone."""
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        pid = _owner_pid(stale)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue  # a running writer (a pid on another host fails this test; its lock still protects it)
        try:
            fd = try_lock(stale)
        except OSError:  # vanished meanwhile, or not a directory we can open
            continue
        if fd is None:
            continue
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


def _remove_empty(directories: list[Path]) -> None:
    """Remove the parents a failed writer created (deepest first), where nothing else was put in them."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def atomic_directory(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``final`` if the block completes without error.

    ``replace=False``: if ``final`` appeared meanwhile (another writer finished first), raise
    ``FileExistsError`` instead of replacing it; the staging directory is removed either way.
    """
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # removed again on failure
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    except BaseException:
        _remove_empty(created)
        raise
    fd = None
    try:
        fd = try_lock(staging)  # a fresh directory: nobody else can hold it
        staging.chmod(0o755)  # mkdtemp makes it private; artefacts are meant to be shared
        yield staging
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} was created by another writer meanwhile")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``final`` to write; if the block completes, it is flushed to
    disk and renamed over ``final`` (then the directory entry is flushed too), else removed."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data first: a crash after the rename must not leave an empty file
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(final.parent)


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
