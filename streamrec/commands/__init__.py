"""Subcommands of ``streamrec``; importing this package registers them all."""

from streamrec.commands import backtest, events, run, services  # noqa: F401
