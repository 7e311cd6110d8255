"""Subcommands of ``streamrec``; importing this package registers them all."""

from streamrec.commands import events, run, services  # noqa: F401
