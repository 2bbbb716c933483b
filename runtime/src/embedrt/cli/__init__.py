"""The ``embedrt`` command. Each subcommand lives in its own module with a ``register`` function.

Export-stage subcommands (export, quantize, build) are defined here so that ``--help`` works
everywhere, and import ``embedrt_export`` only when run.
"""

from __future__ import annotations

import argparse
import importlib
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
        return int(args.run(args) or 0)
    except EmbedrtError as exc:
        print(f"embedrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedrt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
