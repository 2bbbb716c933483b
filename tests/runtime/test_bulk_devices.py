"""`embedrt embed --output DIR/ --workers N | --devices 0,1,...`: shards embedded by worker processes on this
machine must be the local job's, byte for byte, with the same record; resume across modes; a dead worker
stops the job with its name and the rerun completes it; Ctrl-C and a killed parent leave no worker behind.

``--devices`` runs on GPUs; without one, these tests check that it is refused with a message that says
what to do, and the pool itself is tested with CPU workers (the same processes, queues and recording).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bulk_helpers import (
    Interrupted,
    record_of,
    same_run,
    stop_after,
    table_of,
    with_bad_rows,
    write_corpus,
    write_jsonl,
)
from runtime_helpers import mixed_texts

from embedrt import InvalidInputError
from embedrt.backends.onnxruntime import cuda_available
from embedrt.bulk import BulkOptions, RayOptions, Record, run
from embedrt.bulk.devices import parse_devices
from embedrt.bulk.parallel import WorkerError
from embedrt.cli import main
from embedrt.config import usable_cpus

TEXTS = mixed_texts(53, seed=5)
PER_WORKER = max(1, usable_cpus() // 2)


def _gpus_counted() -> bool:
    from embedrt.backends.cuda import gpu_count
    from embedrt.errors import BackendError

    try:
        return gpu_count() > 0
    except BackendError:
        return False


def _options(artefact: Path, inputs: list[Path], output: Path, **kw: Any) -> BulkOptions:
    base = BulkOptions(artefact=artefact, inputs=tuple(str(i) for i in inputs), output=output, shard_size=10,
                       window=4, progress=False)
    return replace(base, **kw)


def _no_workers_left(seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while multiprocessing.active_children():
        assert time.monotonic() < deadline, multiprocessing.active_children()
        time.sleep(0.05)


def test_workers_give_the_local_shards_and_record(qwen3_artefact: Path, tmp_path: Path) -> None:
    """Every input format, bad rows skipped: the same shards, byte for byte, and the same record."""
    inputs = with_bad_rows(tmp_path / "in", TEXTS)
    local, workers = tmp_path / "local", tmp_path / "workers"
    run(_options(qwen3_artefact, inputs, local, on_error="skip"))
    messages: list[str] = []
    record = run(_options(qwen3_artefact, inputs, workers, on_error="skip", workers=2), log=messages.append)
    assert messages == [f"embedding in 2 worker processes of {PER_WORKER} thread{'s' * (PER_WORKER > 1)} each"]
    assert record.complete and record.rows == 55 and record.skipped == 2
    same_run(workers, local)
    _no_workers_left()


def test_resume_across_modes(qwen3_artefact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run interrupted in one process is finished by workers and the other way round; the command's flag."""
    inputs = write_corpus(tmp_path / "in", TEXTS)
    whole = tmp_path / "whole"
    run(_options(qwen3_artefact, inputs, whole))
    first = tmp_path / "first"
    with pytest.raises(Interrupted):
        run(_options(qwen3_artefact, inputs, first), after_shard=stop_after(2))
    run(_options(qwen3_artefact, inputs, first, workers=2))
    same_run(first, whole)
    second = tmp_path / "second"
    with pytest.raises(Interrupted):  # stopped after 3 shards; others may be written, never recorded
        run(_options(qwen3_artefact, inputs, second, workers=2), after_shard=stop_after(3))
    _no_workers_left()
    assert len(record_of(second)["shards"]) == 3 and not record_of(second)["complete"]
    run(_options(qwen3_artefact, inputs, second))
    same_run(second, whole)
    out = tmp_path / "cli"
    args = ["embed", str(qwen3_artefact), "--input", *map(str, inputs), "--output", f"{out}/", "--workers", "2"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "embedding in 2 worker processes" in err and f"wrote 53 x 64 embeddings in 1 shards to {out}/" in err
    np.testing.assert_allclose(table_of(out)[1], table_of(whole)[1], atol=2e-6)  # the command's window is 4,096


def test_a_dead_worker_stops_the_job_and_the_same_command_completes_it(qwen3_artefact: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [f"{t} {i}" for i in range(24) for t in TEXTS[:50]])  # 1,200 rows
    local, out = tmp_path / "local", tmp_path / "out"
    run(_options(qwen3_artefact, [src], local, shard_size=100, window=64))
    killed: list[int] = []

    def kill(record: Record) -> None:
        if len(record.shards) == 2 and not killed:
            worker = multiprocessing.active_children()[0]
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    options = _options(qwen3_artefact, [src], out, shard_size=100, window=64, workers=2)
    with pytest.raises(WorkerError, match=r"the worker process \d \(pid (\d+)\) was killed by SIGKILL while embedding "
                                          r"part-\d+\.parquet; the shards recorded so far are kept: run the same "
                                          r"command again to resume") as caught:
        run(options, after_shard=kill)
    assert str(killed[0]) in str(caught.value)
    _no_workers_left()
    done = record_of(out)["shards"]
    assert 2 <= len(done) < 12 and not record_of(out)["complete"]
    run(options)
    assert table_of(out)[0] == list(range(1200))
    same_run(out, local)


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has a CUDA provider: --devices would run")
def test_devices_without_a_gpu_say_what_to_do(qwen3_artefact: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS[:5])
    out = tmp_path / "out"
    expected = (r"a worker could not load the model \(on .+, GPU 0: BackendError: device cuda asked for, but this "
                r"onnxruntime has no CUDA provider.*\); --devices runs the model on those GPUs: it needs a GPU backend")
    with pytest.raises(WorkerError, match=expected):
        run(_options(qwen3_artefact, [src], out, devices=(0, 1)))
    assert not (out / "_embedrt_run.json").exists() or not record_of(out)["complete"]
    _no_workers_left()


def test_placement_flags_are_checked(qwen3_artefact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_devices("0,1,1,3") == (0, 1, 1, 3)
    src = str(write_jsonl(tmp_path / "in.jsonl", ["a"]))
    base = ["embed", str(qwen3_artefact), "--input", src, "--output", f"{tmp_path}/o/"]
    for extra, message in ((["--devices", "0,x"], "--devices takes GPU indices separated by commas (0,1,2,3; 0,0 "
                                                  "for two workers on GPU 0), not '0,x'"),
                           (["--devices", "-1"], "--devices takes GPU indices"),
                           *([(["--devices", "all"], "--devices all: cannot count this machine's GPUs (")]
                             if not _gpus_counted() else []),
                           (["--workers", "0"], "--workers must be at least 1, not 0"),
                           (["--devices", "0", "--workers", "2"], "--devices and --workers do not go together"),
                           (["--workers", "2", "--ray"], "--workers places workers on this machine; with --ray, Ray "
                                                         "places them")):
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()  # refused before anything was made
    assert main(["embed", str(qwen3_artefact), "a", "--output", str(tmp_path / "o.npy"), "--workers", "2"]) == 2
    assert "--workers go with --output DIR/" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="--devices places workers"):
        run(_options(qwen3_artefact, [Path(src)], tmp_path / "r", devices=(0,), ray=RayOptions()))


def _command(artefact: Path, src: Path, out: Path) -> subprocess.Popen[bytes]:
    """The command with two workers, in a process group of its own (a terminal's Ctrl-C reaches the group)."""
    cmd = [sys.executable, "-m", "embedrt.cli", "embed", str(artefact), "--input", str(src), "--output", f"{out}/",
           "--shard-size", "50", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if record_of(out)["shards"]:
                return proc
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no shard was recorded: {proc.communicate()[1].decode()}")


def _group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    return False


def test_ctrl_c_and_a_killed_parent_leave_no_worker(qwen3_artefact: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole group): the command stops its workers and exits 130. SIGKILL to the command
    alone: its workers notice and exit. Either way the same command then completes the job."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{t} {i}\n" for i in range(40) for t in TEXTS[:50]), encoding="utf-8")  # 2,000 rows
    out = tmp_path / "out"
    proc = _command(qwen3_artefact, src, out)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert _group_gone(proc.pid, 15), "a worker outlived Ctrl-C"
    assert not record_of(out)["complete"]
    proc = _command(qwen3_artefact, src, out)
    proc.kill()
    proc.wait(timeout=30)
    assert _group_gone(proc.pid, 15), "a worker outlived its killed parent"
    assert not record_of(out)["complete"]
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "embed", str(qwen3_artefact), "--input", str(src),
                             "--output", f"{out}/", "--shard-size", "50", "--workers", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming: " in result.stderr
    assert table_of(out)[0] == list(range(2000))
