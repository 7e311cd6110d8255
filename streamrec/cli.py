"""The ``streamrec`` command line: one subcommand per job, each in a small function.

Subcommands register themselves with ``@command``; the module that does the work is
imported inside the handler, so ``streamrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``handler`` as ``streamrec NAME``; ``arguments`` adds its options."""

    def register(handler: Handler) -> Handler:
        _COMMANDS.append((name, help, arguments, handler))
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, arguments, handler in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from streamrec import commands  # noqa: F401  (registers the subcommands)
    from streamrec.errors import StreamrecError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StreamrecError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
