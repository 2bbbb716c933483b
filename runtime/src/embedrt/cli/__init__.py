"""The ``embedrt`` command. Each subcommand lives in its own module with a ``register`` function.

Export-stage subcommands (export, quantize, build) are defined here so that ``--help`` works
everywhere, and import ``embedrt_export`` only when run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import EmbedrtError

_COMMAND_MODULES = ("export_stage", "embed", "serve", "build_cmd", "quantize_cmd")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="embedrt", description="Export, build and serve embedding models.")
    parser.add_argument("--version", action="version", version=f"embedrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
