"""styletx's engine: Gatys et al. style transfer in PyTorch, plus fast, video and CycleGAN modes.

The one entry point is :meth:`StyleTransfer.stylize`; it knows nothing of gRPC (see ``styletx_server`` for that).

The names below resolve on first use (PEP 562): importing a torch-free module such as
``styletx_core.options`` or ``styletx_core.geometry`` must not load torch through this package's ``__init__``
(``styletx-server --help`` and the server's validation rely on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .engine import StyleTransfer
    from .errors import (
        Cancelled,
        EngineError,
        ImageError,
        ModelError,
        OptionError,
        ResourceLimitError,
        WeightsUnavailableError,
    )
    from .options import StylizeOptions
    from .progress import Iterate, StylizeResult

__all__ = [
    "Cancelled",
    "EngineError",
    "ImageError",
    "Iterate",
    "ModelError",
    "OptionError",
    "ResourceLimitError",
    "StyleTransfer",
    "StylizeOptions",
    "StylizeResult",
    "WeightsUnavailableError",
]

#: Where each public name lives.
_HOMES = {
    "StyleTransfer": "engine",
    "StylizeOptions": "options",
    "Iterate": "progress",
    "StylizeResult": "progress",
    **dict.fromkeys(("Cancelled", "EngineError", "ImageError", "ModelError", "OptionError", "ResourceLimitError",
                     "WeightsUnavailableError"), "errors"),
}


_lazy_getattr = lazy_exports(__name__, _HOMES)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from .version import styletx_version

        return styletx_version()
    return _lazy_getattr(name)
