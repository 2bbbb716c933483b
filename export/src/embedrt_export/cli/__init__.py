"""The ``embedrt`` subcommands of this distribution: export, quantize, build.

The runtime's ``embedrt`` finds them through the ``embedrt.commands`` entry points (see
export/pyproject.toml): each ``*_cmd.register(subparsers)`` adds one subcommand with its flags and a
``run``. ``embedrt`` loads these modules every time it starts, ``serve`` and ``embed`` included, so
they import nothing heavy: a command imports its stage when it runs, and turns its flags into the
stage's options in ``options``.
"""
