"""`embedrt export` on bad input: a bad --out fails before any work; broken or mismatched checkpoints
end in one clean error line (exit 2), never a traceback, never a partly random artefact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedrt.cli import main
from embedrt.storage import atomic_directory
from embedrt_export import ExportError, ExportOptions, export_model


def _variant(src: Path, dst: Path, change: Callable[[dict[str, Any]], None] | None = None,
             drop: tuple[str, ...] = ()) -> Path:
    """A checkpoint directory linking ``src``'s files, with its config.json changed and ``drop`` left out."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name not in drop and item.name != "config.json":
            (dst / item.name).symlink_to(item)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if change is not None:
        change(config)
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


def _cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `embedrt export` in-process: an uncaught exception would fail the test with its traceback."""
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").rpartition("\n")[2]  # transformers' progress bars may come before it
    assert last.startswith("embedrt export: error: ") and "Traceback" not in err, err
    return last


# -- item 11: --out is checked before anything is loaded ---------------------------------------------


def test_existing_out_fails_before_the_model_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # The model path does not exist: had it been read first, the error would be about the model.
    err = _cli_error(capsys, str(tmp_path / "no-such-model"), "--out", str(out))
    assert "already exists; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["art"]


def test_out_that_cannot_be_created_fails_before_the_model_is_read(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _cli_error(capsys, str(tmp_path / "no-such-model"), "--out", str(blocker / "art"))
    assert f"cannot write the artefact at {blocker / 'art'}" in err and "choose another --out" in err


def test_out_in_a_directory_nobody_may_write_fails_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    immutable = os.geteuid() == 0  # modes do not stop root; the immutable flag does
    if immutable and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a directory read-only here")
    try:
        err = _cli_error(capsys, str(tmp_path / "no-such-model"), "--out", str(locked / "art"))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert f"cannot write the artefact at {locked / 'art'}" in err \
        and any(reason in err.lower() for reason in ("not permitted", "permission denied"))


def test_failed_export_leaves_no_parent_directories_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, str(tmp_path / "no-such-model"), "--out", str(tmp_path / "a" / "b" / "art"))
    assert "no such directory" in err and list(tmp_path.iterdir()) == []


def test_broken_config_json_is_one_line(qwen3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _variant(qwen3_dir, tmp_path / "m")
    (model / "config.json").write_text('{"model_type": "qwen3",\n "hidden_size": 64,,}')
    err = _cli_error(capsys, str(model), "--out", str(tmp_path / "art"))
    assert f"{model / 'config.json'} is not valid JSON (line 2" in err
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no staging directory left behind


def test_config_field_of_the_wrong_type_is_one_line(qwen3_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = _variant(qwen3_dir, tmp_path / "m", lambda c: c.update(hidden_size="wide"))
    err = _cli_error(capsys, str(model), "--out", str(tmp_path / "art"))
    assert "does not describe a usable model" in err and "wide" in err


def test_impossible_config_is_one_line(minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _variant(minilm_dir, tmp_path / "m", lambda c: c.update(num_attention_heads=5))  # 384 / 5
    err = _cli_error(capsys, str(model), "--out", str(tmp_path / "art"), "--dtype", "fp32")
    assert "transformers cannot load the model" in err and "attention heads" in err


def test_missing_weights_file_is_one_line(qwen3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _variant(qwen3_dir, tmp_path / "m", drop=("model.safetensors",))
    err = _cli_error(capsys, str(model), "--out", str(tmp_path / "art"))
    assert "transformers cannot load the model" in err and "model.safetensors" in err
    assert not (tmp_path / "art").exists()


# -- item 12: weights that do not cover the model are refused -----------------------------------------


def test_more_layers_in_config_than_in_weights_is_refused(minilm_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = _variant(minilm_dir, tmp_path / "m", lambda c: c.update(num_hidden_layers=7))  # weights hold 6
    err = _cli_error(capsys, str(model), "--out", str(tmp_path / "art"), "--dtype", "fp32")
    assert "weights missing from the checkpoint" in err and "encoder.layer.6." in err
    assert "num_hidden_layers" in err
    assert not (tmp_path / "art").exists()


def test_fewer_layers_in_config_than_in_weights_is_refused(qwen3_dirs: dict[str, Path], tmp_path: Path) -> None:
    def one_layer(config: dict[str, Any]) -> None:
        config.update(num_hidden_layers=1, layer_types=config["layer_types"][:1])

    model = _variant(qwen3_dirs["gqa-h64-l2"], tmp_path / "m", one_layer)  # weights hold 2
    with pytest.raises(ExportError, match=r"checkpoint weights the model has no place for \(e.g. layers\.1\."):
        export_model(str(model), tmp_path / "art", ExportOptions(dtypes=("fp32",), max_length=32), log=lambda _: None)


def test_weights_of_the_wrong_shape_are_refused(qwen3_dir: Path, tmp_path: Path) -> None:
    model = _variant(qwen3_dir, tmp_path / "m", lambda c: c.update(intermediate_size=96))
    with pytest.raises(ExportError, match=r"weights of the wrong shape \(e\.g\. layers\.0\.mlp\.down_proj"):
        export_model(str(model), tmp_path / "art", ExportOptions(dtypes=("fp32",), max_length=32), log=lambda _: None)


# -- item 16: concurrent writers keep their own staging directories -----------------------------------


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_staging_of_a_live_writer_survives_another_writer(tmp_path: Path) -> None:
    final = tmp_path / "art"
    with atomic_directory(final) as first:
        (first / "work").write_text("in progress")
        with atomic_directory(final) as second:  # a second writer, same place, while the first is running
            (second / "manifest.json").write_text("{}")
        assert (first / "work").read_text() == "in progress"
        (first / "manifest.json").write_text("{}")
    assert (final / "work").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_staging_of_another_live_process_is_kept_and_a_dead_ones_removed(tmp_path: Path) -> None:
    live, dead = _sleeper(), _sleeper()
    dead.kill()
    dead.wait()
    try:
        kept = tmp_path / f".art.partial-{live.pid}-abc"
        gone = tmp_path / f".art.partial-{dead.pid}-def"
        legacy = tmp_path / ".art.partial-k3j_x9a1"  # written before staging names carried a pid
        for directory in (kept, gone, legacy):
            directory.mkdir()
        with atomic_directory(tmp_path / "art") as stage:
            assert stage.name.startswith(f".art.partial-{os.getpid()}-")
        assert kept.is_dir() and not gone.exists() and not legacy.exists()
    finally:
        live.kill()
        live.wait()


def test_a_locked_staging_directory_is_kept_whatever_its_pid(tmp_path: Path) -> None:
    """Another host's writer on a shared filesystem: its pid means nothing here, its lock does."""
    dead = _sleeper()
    dead.kill()
    dead.wait()
    other = tmp_path / f".art.partial-{dead.pid}-nfs"
    other.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(other)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with atomic_directory(tmp_path / "art"):
            pass
        assert other.is_dir()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_export_into_the_same_out_does_not_replace_the_first(tmp_path: Path) -> None:
    final = tmp_path / "art"
    with pytest.raises(FileExistsError):
        with atomic_directory(final, replace=False) as stage:
            (stage / "mine").write_text("")
            final.mkdir()  # the other export finished meanwhile
            (final / "theirs").write_text("")
    assert (final / "theirs").is_file() and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_export_finishing_second_without_overwrite_says_so(tmp_path: Path) -> None:
    from embedrt_export.export.artefact import staging_dir

    out = tmp_path / "art"
    with pytest.raises(ExportError, match="written by another export meanwhile; pass --overwrite"):
        with staging_dir(out, overwrite=False) as stage:
            (stage / "manifest.json").write_text("{}")
            out.mkdir()
    assert list(out.iterdir()) == []
