"""Subcommands from entry points (``embedrt.commands``): found, listed where missing, and never named.

The runtime knows the export stage only through its entry points; these tests stand in for it with
fake entries, so they hold whether or not embedrt-export is installed.
"""

from __future__ import annotations

import argparse
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import embedrt
from embedrt.cli import build_parser, export_stage, main

RUNTIME_SOURCES = Path(embedrt.__file__).parent


def test_runtime_sources_never_name_the_export_package() -> None:
    named = [str(p.relative_to(RUNTIME_SOURCES)) for p in sorted(RUNTIME_SOURCES.rglob("*.py"))
             if "embedrt_export" in p.read_text(encoding="utf-8")]
    assert named == []


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _entries(monkeypatch: pytest.MonkeyPatch, *entries: EntryPoint) -> None:
    monkeypatch.setattr(export_stage, "entry_points", lambda group: entries if group == export_stage.GROUP else ())


def _plugin(monkeypatch: pytest.MonkeyPatch, run: object) -> EntryPoint:
    """A module ``fake_stage`` whose ``register`` adds ``export`` running ``run``."""
    module = types.ModuleType("fake_stage")

    def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        p = sub.add_parser("export", help="the fake export")
        p.add_argument("model")
        p.set_defaults(run=run)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    return EntryPoint(name="export", value="fake_stage:register", group=export_stage.GROUP)


def test_help_lists_the_export_stage_where_it_is_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _entries(monkeypatch)
    parser = build_parser()
    listed = {action.dest: action.help for action in _subcommands(parser)._choices_actions}
    assert list(listed) == ["export", "embed", "serve", "build", "quantize"]
    assert all(listed[name] == export_stage.EXPORT_STAGE[name] for name in ("export", "build", "quantize"))
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0 and "quantize" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # the command's own help: what it does and how to install it
        parser.parse_args(["export", "--help"])
    assert done.value.code == 0 and export_stage.INSTALL_HINT in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["export", "some/model", "--out", "x"], ["export", "--out", "x", "some/model"],
                                  ["quantize", "art"], ["build", "art", "--precision", "fp16"]])
def test_missing_export_stage_prints_the_hint(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             argv: list[str]) -> None:
    _entries(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"embedrt {argv[0]}: error: {export_stage.INSTALL_HINT}\n"


def test_entry_that_cannot_load_is_a_stand_in(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _entries(monkeypatch, EntryPoint(name="export", value="no_such_stage.cli:register", group=export_stage.GROUP))
    assert main(["export", "m", "--out", "o"]) == 2
    assert capsys.readouterr().err == f"embedrt export: error: {export_stage.INSTALL_HINT} (missing: no_such_stage)\n"


def test_installed_command_runs_and_a_missing_dependency_gives_the_hint(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    _entries(monkeypatch, _plugin(monkeypatch, lambda args: seen.append(args.model) or 0))
    assert main(["export", "m"]) == 0 and seen == ["m"]
    with pytest.raises(SystemExit):  # an installed command's own parser still refuses unknown flags
        main(["export", "m", "--bogus"])

    def needs_torch(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    _entries(monkeypatch, _plugin(monkeypatch, needs_torch))
    assert main(["export", "m"]) == 2
    assert capsys.readouterr().err.endswith(f"{export_stage.INSTALL_HINT} (missing: torch)\n")

    def broken(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'somewhere_else'", name="somewhere_else")

    _entries(monkeypatch, _plugin(monkeypatch, broken))
    with pytest.raises(ModuleNotFoundError):  # not the export stage's to explain: a real error
        main(["export", "m"])


def test_commands_of_other_distributions_come_after(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_extra")
    module.register = lambda sub: sub.add_parser("extra").set_defaults(run=lambda args: 0)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_extra", module)
    _entries(monkeypatch, EntryPoint(name="extra", value="fake_extra:register", group=export_stage.GROUP))
    assert list(_subcommands(build_parser()).choices) == ["export", "embed", "serve", "build", "quantize", "extra"]
    assert main(["extra"]) == 0
