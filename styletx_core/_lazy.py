"""PEP 562 lazy exports for package ``__init__`` modules: ``from .x import Name`` resolved on first use.

Why: importing a torch-free submodule (``styletx_core.options``, ``styletx_core.cyclegan.options``) must not
load torch through its package's ``__init__``; ``styletx --help`` and ``styletx-server --help`` rely on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package + "." + homes[name]`` and returns its ``name``."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's own name
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
