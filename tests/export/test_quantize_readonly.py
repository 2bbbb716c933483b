"""`embedrt quantize` on an artefact it cannot write to: one clean error line, before any work."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedrt.cli import main


@pytest.fixture
def read_only_artefact(qwen3_artefact: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy nobody may write into: mode 0555, and for root (whom modes do not stop) the immutable flag."""
    art = tmp_path / "art"
    shutil.copytree(qwen3_artefact, art)
    art.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(art)], capture_output=True).returncode != 0:
        art.chmod(0o755)
        pytest.skip("running as root without chattr +i: cannot make a directory read-only here")
    try:
        yield art
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(art)], check=True)
        art.chmod(0o755)


def test_read_only_artefact_is_one_clean_error(read_only_artefact: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from embedrt_export.quantize import pipeline

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration started on an artefact that cannot be written")

    monkeypatch.setattr(pipeline, "_prepare", no_work)
    before = sorted(os.listdir(read_only_artefact))
    assert main(["quantize", str(read_only_artefact)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embedrt quantize: error: cannot write to the artefact {read_only_artefact}"), err
    assert "quantize the copy" in err and err.count("\n") == 1
    assert sorted(os.listdir(read_only_artefact)) == before
