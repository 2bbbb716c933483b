"""The ``embedrt`` command. Each subcommand lives in its own module with a ``register`` function.

The runtime's own (embed, serve) are modules here. The export stage's (export, quantize, build) come
from the distribution that installs them, through the ``embedrt.commands`` entry points
(``export_stage``), and are listed, with an install hint, where it is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import EmbedrtError
from . import export_stage

_COMMANDS = ("export", "embed", "serve", "build", "quantize")  # in the order --help lists them
_RUNTIME_COMMANDS = ("embed", "serve")  # modules of this package; the rest are entry points


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="embedrt", description="Export, build and serve embedding models.")
    parser.add_argument("--version", action="version", version=f"embedrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    entries = export_stage.discover()
    for name in _COMMANDS:
        if name in _RUNTIME_COMMANDS:
            importlib.import_module(f"{__name__}.{name}").register(sub)
        else:
            export_stage.register(sub, name, entries.pop(name, None))
    for name, entry in sorted(entries.items()):  # commands other distributions add, after the known ones
        if name not in sub.choices:
            export_stage.register(sub, name, entry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not export_stage.accepts_any_arguments(args):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # what parse_args says
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away shows here
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except EmbedrtError as exc:
        print(f"embedrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedrt {args.command}: interrupted", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of standard output went away (``embedrt embed ... | head``): stop quietly.

    Standard output is pointed at /dev/null so that the interpreter's final flush does not fail
    again; the exit code is 141 (128 + SIGPIPE), what a shell reports for other tools in a pipe.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
