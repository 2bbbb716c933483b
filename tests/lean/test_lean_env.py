"""Runs in an environment with only the runtime installed (`make test` builds it): no torch at all."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def test_torch_and_transformers_are_absent() -> None:
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("transformers") is None


def _embedrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedrt.cli", *args], capture_output=True, text=True, timeout=120)


def test_no_export_commands_are_installed() -> None:
    from importlib.metadata import entry_points

    assert list(entry_points(group="embedrt.commands")) == []


@pytest.mark.parametrize("args", [("export", "some/model", "--out", "x"), ("export", "--out", "x", "some/model"),
                                  ("quantize", "art", "--gate", "0.9"), ("build", "art", "--precision", "fp16")])
def test_export_stage_commands_say_what_to_install(args: tuple[str, ...]) -> None:
    result = _embedrt(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "pip install embedrt-export" in result.stderr
    assert result.stderr.startswith(f"embedrt {args[0]}: error: ") and "Traceback" not in result.stderr


def test_help_works_without_the_export_stage() -> None:
    listing = _embedrt("--help")
    assert listing.returncode == 0
    assert all(f"    {name} " in listing.stdout for name in ("export", "embed", "serve", "build", "quantize"))
    result = _embedrt("export", "--help")
    assert result.returncode == 0 and "pip install embedrt-export" in result.stdout
