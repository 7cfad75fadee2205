"""The installed version of styletx (the server + engine distribution), looked up in one place."""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "styletx_version"]

DISTRIBUTION = "styletx"


def styletx_version() -> str:
    """The distribution's version, or ``0+unknown`` when run from a tree that was never installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
