"""Subcommands of ``streamrec``; importing this package registers them all."""

from streamrec.commands import services  # noqa: F401
