"""The ``streamrec`` command line: one subcommand per job.

Each is a small function in ``streamrec/commands/``, registered with ``@command``
(``streamrec.commands.registry``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from core.errors import StreamrecError
    from streamrec import commands  # noqa: F401  (registers the subcommands)
    from streamrec.commands.registry import build_parser

    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StreamrecError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
