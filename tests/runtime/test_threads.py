"""The default CPU thread count of a backend session: the CPUs this process may use, or the environment's."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from embedrt import config
from embedrt.config import BackendConfig, default_intra_op_threads, usable_cpus

ENV_AT_IMPORT = "EMBEDRT_INTRA_OP_THREADS" in os.environ


@pytest.fixture
def cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EMBEDRT_INTRA_OP_THREADS", raising=False)
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(config, "CGROUP_CPU_MAX", path)
    return path


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def test_default_is_a_plain_int_of_the_usable_cpus() -> None:
    # A plain int default (read at import): the CLI lists dataclass defaults.
    default = next(f.default for f in dataclasses.fields(BackendConfig) if f.name == "intra_op_threads")
    assert isinstance(default, int) and default == BackendConfig().intra_op_threads
    if not ENV_AT_IMPORT:
        assert default == usable_cpus() >= 1


def test_no_quota_means_the_affinity_mask(cgroup: Path) -> None:
    assert usable_cpus() == _affinity()  # no cgroup file
    cgroup.write_text("max 100000\n")
    assert usable_cpus() == _affinity()


def test_cgroup_quota_caps_threads(cgroup: Path) -> None:
    cgroup.write_text("150000 100000\n")  # 1.5 CPUs: two threads, the second half busy
    assert usable_cpus() == min(2, _affinity())
    cgroup.write_text("50000 100000\n")
    assert usable_cpus() == 1
    cgroup.write_text("garbage\n")
    assert usable_cpus() == _affinity()


def test_environment_overrides(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDRT_INTRA_OP_THREADS", "3")
    assert default_intra_op_threads() == 3
    monkeypatch.setenv("EMBEDRT_INTRA_OP_THREADS", "0")
    assert default_intra_op_threads() == 0  # ONNX Runtime's own choice
    assert BackendConfig(intra_op_threads=5).intra_op_threads == 5  # an explicit value always wins
    for bad in ("two", "-1"):
        monkeypatch.setenv("EMBEDRT_INTRA_OP_THREADS", bad)
        with pytest.raises(ValueError, match="EMBEDRT_INTRA_OP_THREADS"):
            default_intra_op_threads()
