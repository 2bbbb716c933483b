"""Runs in an environment with only the runtime installed (`make test` builds it): no torch at all."""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def test_torch_and_transformers_are_absent() -> None:
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("transformers") is None


def test_export_command_says_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "export", "some/model", "--out", "x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install embedrt-export" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_works_without_the_export_stage() -> None:
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "export", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--max-length" in result.stdout
