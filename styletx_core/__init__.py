"""styletx's engine: Gatys et al. style transfer in PyTorch, plus fast, video and CycleGAN modes.

The one entry point is :meth:`StyleTransfer.stylize`; it knows nothing of gRPC (see ``server/`` for that).
"""

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

__version__ = "0.1.0"

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
