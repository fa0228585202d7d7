"""Subcommands of the `medsight` CLI; each module exposes ``register(subparsers)``."""
