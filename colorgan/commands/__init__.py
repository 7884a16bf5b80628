"""Subcommands of the `colorgan` CLI: one module per command, each with `register(subparsers)`."""
