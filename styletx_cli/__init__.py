"""`styletx` subcommands that need the engine (torch).

Each module exposes ``register(subparsers)`` (listed under ``[project.entry-points."styletx.commands"]`` in
pyproject.toml); the client's CLI discovers them, so a client-only install simply lacks them.
"""
