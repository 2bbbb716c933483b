"""Subcommands that other distributions add to ``embedrt``: export, quantize and build, from embedrt-export.

A distribution declares them in the ``embedrt.commands`` entry-point group (optimum's
command-registration pattern): each entry names a ``register(subparsers)`` function that adds its
subcommand, with its flags, help and a ``run`` default. The runtime discovers them here and knows
nothing else about them, so it never imports the export stage by name.

Where the export stage is not installed (or cannot be loaded), export, quantize and build are
still listed, so that ``embedrt --help`` reads the same everywhere; running one prints the install
hint. A command that is installed but finds torch, transformers or onnx missing when it runs says the
same, naming what is missing.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import EmbedrtError

GROUP = "embedrt.commands"

INSTALL_HINT = (
    "this command needs the export stage, which is not installed: "
    "`pip install embedrt-export` (from this repository: `pip install -e export`; "
    "add torch first with `pip install torch --index-url https://download.pytorch.org/whl/cpu` for the CPU build)"
)

# The export stage's commands, listed even where it is missing: name -> one-line help.
EXPORT_STAGE = {
    "export": "export a Hugging Face embedding model to a validated ONNX artefact",
    "build": "build TensorRT engines for an artefact (per GPU, per precision)",
    "quantize": "add INT8 graphs to an artefact (Q/DQ for TensorRT, u8s8 for CPU), behind a quality gate",
}
# What the export stage needs at run time besides itself: missing, they mean it is not fully installed.
_DEPENDENCIES = ("torch", "transformers", "onnx")

Run = Callable[[argparse.Namespace], Any]


def discover() -> dict[str, EntryPoint]:
    """The installed ``embedrt.commands`` entries by command name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def register(sub: argparse._SubParsersAction, name: str, entry: EntryPoint | None) -> None:  # type: ignore[type-arg]
    """Add command ``name`` from ``entry``; where there is none or it cannot be loaded, a stand-in."""
    if entry is None:
        _stand_in(sub, name, None)
        return
    try:
        add = entry.load()
    except ImportError as exc:  # a broken or half-installed distribution: the command says so when run
        _stand_in(sub, name, exc.name or str(exc))
        return
    before = set(sub.choices)
    add(sub)
    owners = (entry.module.split(".")[0], *_DEPENDENCIES)
    for added in set(sub.choices) - before:
        parser = sub.choices[added]
        parser.set_defaults(run=functools.partial(_guarded, parser.get_default("run"), owners))


def accepts_any_arguments(args: argparse.Namespace) -> bool:
    """True for a stand-in: whatever follows its name is passed over, since only the hint is printed."""
    return bool(getattr(args, "stand_in", False))


def _stand_in(sub: argparse._SubParsersAction, name: str, missing: str | None) -> None:  # type: ignore[type-arg]
    message = INSTALL_HINT + (f" (missing: {missing})" if missing else "")
    # Raw: the hint's command must not be broken over lines (argparse breaks at the hyphen in embedrt-export).
    parser = sub.add_parser(name, help=EXPORT_STAGE.get(name, "needs the export stage"),
                            description=f"{EXPORT_STAGE.get(name, name)}.\n\n{message}.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=functools.partial(_not_installed, message), stand_in=True)


def _not_installed(message: str, args: argparse.Namespace) -> int:
    raise EmbedrtError(message)


def _guarded(run: Run, owners: tuple[str, ...], args: argparse.Namespace) -> Any:
    """Run an installed command; its own package or a dependency failing to import gives the hint."""
    try:
        return run(args)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in owners:
            raise EmbedrtError(f"{INSTALL_HINT} (missing: {exc.name})") from exc
        raise
